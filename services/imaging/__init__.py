"""Imaging service: DICOM intake, study completion and (next) decompression metrics."""
