"""FHIR R4 domain code of the outcomes service: codes, validation, scoring, search
parameters. No web framework and no database here."""
