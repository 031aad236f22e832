"""Importing the clinical registry (KEOPS-style exports): a mapping file says which column
holds what (:mod:`.mapping`), the table is read as the registry wrote it (:mod:`.table`),
each row becomes a checked patient record or a list of cell errors (:mod:`.rows`), and the
records are written as FHIR resources through the server's write door, idempotently
(:mod:`.importer`)."""
