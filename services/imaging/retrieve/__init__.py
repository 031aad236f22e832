"""What WADO-RS serves beyond the stored instance: frames, rendered images, bulk data.

Pure DICOM work (pydicom, numpy, Pillow) on a stored Part 10 file's bytes; the routes in
``api.dicomweb`` negotiate the media type here and stream what this package yields.
"""
