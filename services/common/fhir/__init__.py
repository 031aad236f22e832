"""The study's FHIR vocabulary and resource builders, shared by the three services."""
