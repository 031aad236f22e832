"""Image analysis of the imaging service (no web framework here): volumes from DICOM
series in any acquisition orientation, and (next) the decompression metrics."""
