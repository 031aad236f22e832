"""The main job end to end, as a script runs it (``--no-serve``), on a small cohort."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.harness.net import free_port
from tests.harness.orthanc import dicomweb_plugin, orthanc_binary
from tools.demo.__main__ import _port_free

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def _three_free_ports() -> int:
    """A base port with base, base + 1 and base + 2 free (the demo's layout)."""
    for _ in range(50):
        base = free_port()
        if base + 2 <= 65535 and all(_port_free(base + i) for i in (1, 2)):
            return base
    raise RuntimeError("no three consecutive free ports")


def _run(data: Path, *options: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tools.demo", "--patients", "3", "--no-serve", *options]
    command += ["--data-dir", str(data), "--base-port", str(_three_free_ports())]
    command += ["--dicom-port", str(free_port()), "--phantom-cache", str(data.parent / "cache")]
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )


def test_demo_imports_the_registry_retrieves_the_cohort_and_summarises(tmp_path: Path) -> None:
    """The retrospective story: the export and the PACS's archive of two operated patients
    (one per group), imported and retrieved over DICOMweb, plus one prospective patient
    whose post-operative CT the PACS routes; then the summary and the report."""
    if not (orthanc_binary() and dicomweb_plugin()):
        pytest.skip("Orthanc is not installed (run `make system-deps`)")
    data = tmp_path / "demo"
    run = _run(data)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "registry import: 2 rows, 2 patients loaded, 0 rejected" in run.stdout
    assert "cohort retrieval (dicomweb):" in run.stdout
    assert run.stdout.count("  retrieved") + run.stdout.count("  analysed") == 2
    assert "routed by its rule" in run.stdout
    assert (
        "Cases: 3 (foraminal-stenosis: 2, central-stenosis: 1); with a pre/post pair: 3"
        in run.stdout
    )
    assert "Foraminal height (mm)" in run.stdout and "Dural sac area (mm2)" in run.stdout
    assert "SRs back in the PACS" in run.stdout
    report = (data / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= 9
    assert "Table 1. Baseline characteristics by group" in report
    assert "MRN1" not in report  # the report is the researcher's (pseudonymised) view
    assert (data / "report.pdf").read_bytes().startswith(b"%PDF")
    assert zipfile.is_zipfile(data / "analysis.zip")
    assert "retrieving from PACS: 2/2" in run.stderr
    assert "analysing: 6/6" in run.stderr
    # Re-runnable (it starts from an empty store), and by DIMSE C-FIND + C-MOVE as well.
    # ... with two simulated readers through the review workstation's API.
    again = _run(data, "--pacs-protocol", "c-move", "--simulated-reads")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "cohort retrieval (c-move):" in again.stdout
    assert "simulated reading: reader-1 reviewed 6 studies" in again.stdout
    assert "reader-2 read a blinded 30% sample (2 studies" in again.stdout
    assert "agreement (simulated readers" in again.stdout
    assert "with a pre/post pair: 3" in again.stdout
