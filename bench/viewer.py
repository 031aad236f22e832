"""What a web viewer waits for: time to first image and frames throughput for one CT series,
from the imaging service's DICOMweb, through the gateway's viewer relay, and from Orthanc's
DICOMweb plugin (the peer) holding the same instances, in the same run.

Time to first image is what OHIF does before it draws: QIDO-RS for the study's series, the
series metadata, then frame 1 of the middle instance (median of repeated runs). Throughput
is every frame of the series, fetched with six connections as a browser does per host, with
OHIF's Accept (``multipart/related; type=application/octet-stream; transfer-syntax=*``).

    python bench/viewer.py [--slices 300] [--size 512] [--runs 5] [--connections 6]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # not bench/: its fhir.py would shadow the fhir package

from bench._servers import start_service, stop, token  # noqa: E402
from tests.harness.dcmtk import storescu  # noqa: E402
from tests.harness.net import free_port, wait_until  # noqa: E402
from tests.harness.orthanc import OrthancServer  # noqa: E402
from tests.harness.series import SeriesSpec, make_series, write_series  # noqa: E402

ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"


def first_image(base: str, headers: dict[str, str], study: str) -> float:
    with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
        start = time.perf_counter()
        series = client.get(f"/studies/{study}/series")
        series.raise_for_status()
        uid = series.json()[0]["0020000E"]["Value"][0]
        metadata = client.get(f"/studies/{study}/series/{uid}/metadata")
        metadata.raise_for_status()
        items = metadata.json()
        middle = items[len(items) // 2]["00080018"]["Value"][0]
        frame = client.get(
            f"/studies/{study}/series/{uid}/instances/{middle}/frames/1",
            headers={"Accept": ACCEPT},
        )
        frame.raise_for_status()
        return time.perf_counter() - start


async def all_frames(
    base: str, headers: dict[str, str], study: str, series: str, instances: list[str], n: int
) -> tuple[float, int]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(
        base_url=base, headers=headers, timeout=120, limits=limits
    ) as client:
        queue: asyncio.Queue[str] = asyncio.Queue()
        for uid in instances:
            queue.put_nowait(uid)
        received = 0

        async def worker() -> None:
            nonlocal received
            while not queue.empty():
                uid = queue.get_nowait()
                response = await client.get(
                    f"/studies/{study}/series/{series}/instances/{uid}/frames/1",
                    headers={"Accept": ACCEPT},
                )
                response.raise_for_status()
                received += len(response.content)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(n)))
        return time.perf_counter() - start, received


def measure(
    name: str,
    base: str,
    headers: dict[str, str],
    study: str,
    series: str,
    instances: list[str],
    args: argparse.Namespace,
) -> dict[str, float]:
    first_image(base, headers, study)  # warm: connections, caches, the first import
    firsts = [first_image(base, headers, study) for _ in range(args.runs)]
    seconds, size = asyncio.run(
        all_frames(base, headers, study, series, instances, args.connections)
    )
    row = {
        "first_ms": 1000 * statistics.median(firsts),
        "frames_per_s": len(instances) / seconds,
        "mb_per_s": size / seconds / 1e6,
    }
    print(
        f"{name:<28} first image {row['first_ms']:7.1f} ms   "
        f"{row['frames_per_s']:7.1f} frames/s   {row['mb_per_s']:6.1f} MB/s",
        flush=True,
    )
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--connections", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spec = SeriesSpec(slices=args.slices, rows=args.size, columns=args.size, seed=1)
        datasets = make_series(spec)
        files = write_series(datasets, root / "series")
        instances = [str(ds.SOPInstanceUID) for ds in datasets]
        dicom_port = free_port()
        imaging, imaging_url = start_service(
            "imaging",
            root / "imaging",
            {
                "IMAGING_DICOM_PORT": str(dicom_port),
                "IMAGING_DICOM_HOST": "127.0.0.1",
                "IMAGING_ANALYSIS_ENABLED": "false",
            },
        )
        gateway = None
        try:
            gateway, gateway_url = start_service(
                "gateway",
                root / "gateway",
                {
                    "GATEWAY_IMAGING_URL": imaging_url,
                    "GATEWAY_OUTCOMES_URL": "http://127.0.0.1:9/fhir",
                    "GATEWAY_PSEUDONYM_KEY": "bench-pseudonym-key-" + "z" * 32,
                    "GATEWAY_COHORT_WARM_UP": "false",
                },
            )
            with OrthancServer(root / "orthanc") as orthanc:
                for port, aet in ((dicom_port, "SPINEIMG"), (orthanc.dicom_port, orthanc.aet)):
                    sent = storescu(port, aet, files)
                    if sent.returncode != 0:
                        raise RuntimeError(f"storescu failed: {sent.stderr[-300:]}")
                bearer = {"Authorization": f"Bearer {token('imaging.read')}"}
                with httpx.Client(base_url=imaging_url, headers=bearer) as client:
                    wait_until(
                        lambda: (
                            len(client.get(f"/dicomweb/studies/{spec.study_uid}/instances").json())
                            == args.slices
                        ),
                        60,
                        0.5,
                    )
                clinician = {"Authorization": f"Bearer {token('gateway.read', role='clinician')}"}
                print(
                    f"One CT series, {args.slices} slices of {args.size}x{args.size} "
                    f"(16-bit, native), {args.connections} connections for the frames:",
                    flush=True,
                )
                rows = {
                    "imaging": measure(
                        "imaging service DICOMweb",
                        f"{imaging_url}/dicomweb",
                        bearer,
                        spec.study_uid,
                        spec.series_uid,
                        instances,
                        args,
                    ),
                    "gateway": measure(
                        "gateway viewer relay",
                        f"{gateway_url}/viewer/dicomweb",
                        clinician,
                        spec.study_uid,
                        spec.series_uid,
                        instances,
                        args,
                    ),
                    "orthanc": measure(
                        "Orthanc DICOMweb plugin",
                        orthanc.dicomweb_url,
                        {},
                        spec.study_uid,
                        spec.series_uid,
                        instances,
                        args,
                    ),
                }
        finally:
            if gateway is not None:
                stop(gateway)
            stop(imaging)
    peer = rows["orthanc"]
    for name in ("imaging", "gateway"):
        row = rows[name]
        print(
            f"{name}/Orthanc: first image {row['first_ms'] / peer['first_ms']:.2f}x the time, "
            f"frames {row['frames_per_s'] / peer['frames_per_s']:.2f}x the rate"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
