"""Spine-surgery decompression outcomes study: imaging, outcomes and gateway services."""
