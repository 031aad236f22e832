"""dcmtk command-line clients (storescu, echoscu) as real DICOM peers."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path


def have_dcmtk() -> bool:
    return shutil.which("storescu") is not None and shutil.which("echoscu") is not None


def echoscu(port: int, called: str, calling: str = "ECHOSCU") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["echoscu", "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def storescu(
    port: int,
    called: str,
    files: Sequence[Path],
    *,
    calling: str = "STORESCU",
    extra: Sequence[str] = (),
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """Send files in one association; ``--required`` proposes exactly their syntaxes."""
    return subprocess.run(
        [
            "storescu",
            "-aet",
            calling,
            "-aec",
            called,
            "--required",
            *extra,
            "127.0.0.1",
            str(port),
            *[str(f) for f in files],
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
