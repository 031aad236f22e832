"""Outcomes service: FHIR R4 server for complications and patient-reported outcomes."""
