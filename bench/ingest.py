"""Ingest benchmark: the same 300-slice 512x512 CT series sent with dcmtk storescu to
(a) the imaging service's SCP and (b) a real Orthanc, both started here as separate
processes on loopback; one sender, then 4 parallel senders. Prints instances/s, MB/s,
the ratio, and the imaging service's peak memory while receiving.

    python bench/ingest.py [--slices 300] [--size 512]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._servers import dcmtk_nodelay  # noqa: E402
from tests.harness.dcmtk import echoscu  # noqa: E402
from tests.harness.net import free_port, wait_until  # noqa: E402
from tests.harness.orthanc import OrthancServer  # noqa: E402
from tests.harness.series import SeriesSpec, make_series, write_series  # noqa: E402


class PeakRss:
    """Samples a process tree's resident memory every 20 ms."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = self.process.memory_info().rss + sum(
                    c.memory_info().rss for c in self.process.children(recursive=True)
                )
                self.peak = max(self.peak, rss)
            except psutil.Error:
                pass
            time.sleep(0.02)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def send(port: int, aet: str, files: list[Path], senders: int) -> float:
    """Send ``files`` split over ``senders`` parallel storescu processes; return seconds."""
    groups = [files[i::senders] for i in range(senders)]
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["storescu", "-aec", aet, "-aet", f"BENCH{i}", "127.0.0.1", str(port), *map(str, g)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for i, g in enumerate(groups)
    ]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode()[-500:]}")
    return time.perf_counter() - start


def start_imaging(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    dicom_port, http_port = free_port(), free_port()
    env = dict(
        os.environ,
        IMAGING_DATA_DIR=str(workdir / "imaging"),
        IMAGING_DICOM_PORT=str(dicom_port),
        IMAGING_DICOM_HOST="127.0.0.1",
        IMAGING_HTTP_PORT=str(http_port),
        IMAGING_LOG_LEVEL="WARNING",
        AUTH_SECRET_KEY="bench-signing-key-" + "x" * 32,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.imaging", "serve"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "imaging.log").open("wb"),
    )
    if not wait_until(lambda: echoscu(dicom_port, "SPINEIMG").returncode == 0, 60, 0.3):
        proc.kill()
        raise RuntimeError("imaging service did not start")
    return proc, dicom_port


def measure(
    label: str, run: Callable[[list[Path], int], float], files: list[Path], senders: int
) -> float:
    seconds = run(files, senders)
    size_mb = sum(f.stat().st_size for f in files) / 1e6
    rate = len(files) / seconds
    print(
        f"  {label:<8} {senders} sender(s): {seconds:6.2f} s  {rate:7.1f} instances/s  "
        f"{size_mb / seconds:7.1f} MB/s"
    )
    return rate


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--nagle", action="store_true", help="leave dcmtk's Nagle on")
    args = parser.parse_args()
    print(dcmtk_nodelay(args.nagle))
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        workdir = Path(tmp)
        results: dict[tuple[str, int], float] = {}
        series: dict[int, list[Path]] = {}
        for senders in (1, 4):
            # A fresh series (new UIDs) per run, so that nobody answers from a cache.
            spec = SeriesSpec(slices=args.slices, rows=args.size, columns=args.size, seed=senders)
            series[senders] = write_series(make_series(spec), workdir / f"series-{senders}")
        total_mb = sum(f.stat().st_size for f in series[1]) / 1e6
        print(f"series: {args.slices} slices of {args.size}x{args.size} CT, {total_mb:.1f} MB")

        proc, port = start_imaging(workdir)
        try:
            with PeakRss(proc.pid) as rss:
                for senders in (1, 4):
                    results[("imaging", senders)] = measure(
                        "imaging",
                        lambda f, s: send(port, "SPINEIMG", f, s),
                        series[senders],
                        senders,
                    )
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        print(f"  imaging service peak RSS while receiving: {rss.peak / 1e6:.0f} MB")

        with OrthancServer(workdir / "orthanc") as orthanc:
            for senders in (1, 4):
                results[("orthanc", senders)] = measure(
                    "orthanc",
                    lambda f, s: send(orthanc.dicom_port, orthanc.aet, f, s),
                    series[senders],
                    senders,
                )
        print("ratio imaging / orthanc:")
        for senders in (1, 4):
            ratio = results[("imaging", senders)] / results[("orthanc", senders)]
            print(f"  {senders} sender(s): {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
