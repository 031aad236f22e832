"""Cohort retrieval benchmark: the same historical studies pulled from one real Orthanc
by the imaging service (its ``POST /api/cohort/retrieve``: C-FIND or QIDO, choice, then
the transfer) over DICOMweb (WADO-RS), DIMSE C-GET and DIMSE C-MOVE to its own SCP, side
by side with the peer: Orthanc's own transfer of the same studies to a dcmtk
``storescp`` (``POST /modalities/{peer}/store``, one C-STORE association). The imaging
service runs as its own process with analysis off (the peer analyses nothing either) and
its default pacing (one study at a time, unthrottled).

    python bench/retrieval.py [--patients 8] [--slices 100] [--size 256] [--concurrency 1]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # not bench/: its fhir.py would shadow the fhir package

from bench._servers import dcmtk_nodelay, start_service, stop, token  # noqa: E402
from tests.harness.dcmtk import echoscu, storescu  # noqa: E402
from tests.harness.net import free_port, wait_until  # noqa: E402
from tests.harness.orthanc import OrthancServer  # noqa: E402
from tests.harness.series import SeriesSpec, make_series, write_series  # noqa: E402

SURGERY = date(2023, 5, 15)
AE = "SPINEIMG"
PROTOCOLS = {
    "DICOMweb": {"IMAGING_PACS_PROTOCOL": "dicomweb"},
    "C-GET": {"IMAGING_PACS_PROTOCOL": "dimse", "IMAGING_PACS_RETRIEVE": "get"},
    "C-MOVE": {"IMAGING_PACS_PROTOCOL": "dimse", "IMAGING_PACS_RETRIEVE": "move"},
}


def archive(orthanc: OrthancServer, workdir: Path, args: argparse.Namespace) -> list[str]:
    """Each patient's pre- (day -20) and post-operative (day +2) CT; returns Orthanc ids."""
    ids = []
    for n in range(args.patients):
        for offset in (-20, 2):
            spec = SeriesSpec(
                slices=args.slices,
                rows=args.size,
                columns=args.size,
                patient_id=f"BENCH{n:03d}",
                study_date=f"{SURGERY + timedelta(days=offset):%Y%m%d}",
                seed=n,
            )
            files = write_series(make_series(spec), workdir / f"{n}-{offset}")
            sent = storescu(orthanc.dicom_port, orthanc.aet, files)
            if sent.returncode != 0:
                raise RuntimeError(f"storescu to Orthanc failed: {sent.stderr[-300:]}")
            ids.append(orthanc.study_id(spec.study_uid))
    return ids


def peer(orthanc: OrthancServer, ids: list[str], port: int, workdir: Path) -> float:
    out = workdir / "storescp"
    out.mkdir()
    scp = subprocess.Popen(
        ["storescp", "-aet", "STORESCP", "-od", str(out), "--fork", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        if not wait_until(lambda: echoscu(port, "STORESCP").returncode == 0, 30, 0.2):
            raise RuntimeError("storescp did not start")
        start = time.perf_counter()
        orthanc.post("/modalities/peer/store", {"Resources": ids, "Synchronous": True}, 3600)
        return time.perf_counter() - start
    finally:
        scp.terminate()
        scp.wait(timeout=30)


def retrieve(
    protocol: str, orthanc: OrthancServer, dicom_port: int, workdir: Path, args: argparse.Namespace
) -> float:
    env = {
        **PROTOCOLS[protocol],
        "IMAGING_PACS_DICOMWEB_URL": orthanc.dicomweb_url,
        "IMAGING_PACS_DICOM_HOST": "127.0.0.1",
        "IMAGING_PACS_DICOM_PORT": str(orthanc.dicom_port),
        "IMAGING_PACS_CALLED_AET": orthanc.aet,
        "IMAGING_DICOM_HOST": "127.0.0.1",
        "IMAGING_DICOM_PORT": str(dicom_port),
        "IMAGING_AE_TITLE": AE,
        "IMAGING_ANALYSIS_ENABLED": "false",
        "IMAGING_COHORT_MIN_INSTANCES": "10",
        "IMAGING_COHORT_CONCURRENCY": str(args.concurrency),
    }
    proc, base = start_service("imaging", workdir / protocol, env)
    headers = {"Authorization": f"Bearer {token('imaging.read imaging.write')}"}
    patients = [
        {
            "patient_id": f"BENCH{n:03d}",
            "surgery_date": SURGERY.isoformat(),
            "group": "foraminal-stenosis",
        }
        for n in range(args.patients)
    ]
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=120) as http:
            start = time.perf_counter()
            http.post("/api/cohort/retrieve", json={"patients": patients}).raise_for_status()
            while True:
                listed = http.get("/api/cohort").json()
                settled = [p for p in listed if p["status"] not in ("found", "retrieving")]
                if len(listed) == len(patients) and len(settled) == len(patients):
                    break
                time.sleep(0.1)
            seconds = time.perf_counter() - start
        wrong = [p for p in listed if p["status"] != "retrieved"]
        if wrong:
            raise RuntimeError(f"{protocol}: not retrieved: {wrong[:2]}")
        return seconds
    finally:
        stop(proc)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, default=8)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=1, help="studies at once")
    parser.add_argument("--nagle", action="store_true", help="leave dcmtk's Nagle on")
    args = parser.parse_args()
    print(dcmtk_nodelay(args.nagle))
    studies = 2 * args.patients
    instances = studies * args.slices
    with tempfile.TemporaryDirectory(prefix="bench-retrieval-") as tmp:
        workdir = Path(tmp)
        dicom_port, peer_port = free_port(), free_port()
        modalities = {
            "spineimg": [AE, "127.0.0.1", dicom_port],
            "peer": ["STORESCP", "127.0.0.1", peer_port],
        }
        with OrthancServer(workdir / "orthanc", modalities=modalities) as orthanc:
            ids = archive(orthanc, workdir / "series", args)
            size_mb = sum(f.stat().st_size for f in (workdir / "series").rglob("*.dcm")) / 1e6
            print(
                f"archive: {args.patients} patients, {studies} CT studies of {args.slices} "
                f"slices {args.size}x{args.size}, {instances} instances, {size_mb:.0f} MB"
            )
            rows = [("Orthanc -> storescp (peer)", peer(orthanc, ids, peer_port, workdir))]
            for protocol in PROTOCOLS:
                seconds = retrieve(protocol, orthanc, dicom_port, workdir, args)
                rows.append((f"imaging by {protocol}", seconds))
        reference = rows[0][1]
        for label, seconds in rows:
            print(
                f"  {label:<27} {seconds:7.2f} s  {60 * studies / seconds:7.1f} studies/min  "
                f"{instances / seconds:7.1f} instances/s  {size_mb / seconds:6.1f} MB/s  "
                f"ratio to peer {reference / seconds:.2f}x"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
