"""A real Orthanc as the PACS (the launcher is shared with the demo)."""

from tools.demo.orthanc import OrthancServer, dicomweb_plugin, orthanc_binary

__all__ = ["OrthancServer", "dicomweb_plugin", "orthanc_binary"]
