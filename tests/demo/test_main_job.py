"""The main job end to end, as a script runs it (``--no-serve``), on a small cohort."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.net import free_port
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


def _run(data: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tools.demo", "--patients", "2", "--no-serve"]
    command += ["--data-dir", str(data), "--base-port", str(_three_free_ports())]
    command += ["--dicom-port", str(free_port())]
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )


def test_demo_sends_analyses_summarises_and_writes_the_report(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    run = _run(data)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (
        "Cases: 2 (foraminal-stenosis: 1, central-stenosis: 1); with a pre/post pair: 2"
        in run.stdout
    )
    assert "Foraminal height (mm)" in run.stdout and "Dural sac area (mm2)" in run.stdout
    report = (data / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 6
    assert "MRN1" not in report  # the report is the researcher's (pseudonymised) view
    assert "analysing: 4/4" in run.stderr
    again = _run(data)  # re-runnable: starts from an empty store
    assert again.returncode == 0, again.stderr[-2000:]
    assert "with a pre/post pair: 2" in again.stdout
