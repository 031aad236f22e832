"""Ingest benchmark: the same 300-slice 512x512 CT series sent with dcmtk storescu to
(a) the imaging service's SCP (its default number of SCP processes, then one), (b) a
bare pynetdicom SCP that writes the bytes it receives (no fsync, no index, unlimited
PDU: what pynetdicom itself costs) and (c) a real Orthanc, each started here as separate
processes on loopback; one sender, then 4 parallel senders. Prints instances/s, MB/s,
the ratios, and the imaging service's peak memory (its processes) while receiving.

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
from services.imaging.settings import default_dicom_processes  # noqa: E402
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


def start_imaging(
    workdir: Path, processes: int | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    dicom_port, http_port = free_port(), free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ,
        **({"IMAGING_DICOM_PROCESSES": str(processes)} if processes else {}),
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
    # The port answers as soon as the first process listens: wait for its helpers.
    helpers = (processes or default_dicom_processes()) - 1
    wait_until(lambda: len(psutil.Process(proc.pid).children()) >= helpers, 60, 0.2)
    time.sleep(1.0)
    return proc, dicom_port


BARE_SCP = """
import sys
from pathlib import Path
from pynetdicom import AE, evt, AllStoragePresentationContexts
from pynetdicom.sop_class import Verification
out = Path(sys.argv[2])
def store(event):
    (out / event.request.AffectedSOPInstanceUID).write_bytes(
        event.encoded_dataset(include_meta=True))
    return 0x0000
ae = AE(ae_title="BARESCP")
ae.maximum_pdu_size = 0
ae.maximum_associations = 16
ae.supported_contexts = AllStoragePresentationContexts
ae.add_supported_context(Verification)
ae.start_server(("127.0.0.1", int(sys.argv[1])), evt_handlers=[
    (evt.EVT_C_STORE, store), (evt.EVT_C_ECHO, lambda e: 0x0000)])
"""


def start_bare_scp(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    folder = workdir / "bare-scp"
    folder.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", BARE_SCP, str(port), str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if not wait_until(lambda: echoscu(port, "BARESCP").returncode == 0, 60, 0.3):
        proc.kill()
        raise RuntimeError("bare pynetdicom SCP did not start")
    return proc, port


def measure(
    label: str, run: Callable[[list[Path], int], float], files: list[Path], senders: int
) -> float:
    seconds = run(files, senders)
    size_mb = sum(f.stat().st_size for f in files) / 1e6
    rate = len(files) / seconds
    print(
        f"  {label:<28} {senders} sender(s): {seconds:6.2f} s  {rate:7.1f} instances/s  "
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
        series: dict[tuple[str, int], list[Path]] = {}
        peers = ("imaging", "imaging-1", "bare-scp", "orthanc")
        seed = 0
        for peer in peers:
            for senders in (1, 4):
                # A fresh series (new UIDs) per run, so that nobody answers from a cache.
                seed += 1
                spec = SeriesSpec(slices=args.slices, rows=args.size, columns=args.size, seed=seed)
                series[(peer, senders)] = write_series(
                    make_series(spec), workdir / f"series-{peer}-{senders}"
                )
        total_mb = sum(f.stat().st_size for f in series[("imaging", 1)]) / 1e6
        print(f"series: {args.slices} slices of {args.size}x{args.size} CT, {total_mb:.1f} MB")
        default_processes = default_dicom_processes()

        for peer, processes in (("imaging", None), ("imaging-1", 1)):
            proc, port = start_imaging(workdir / peer, processes)
            label = f"imaging ({processes or default_processes} SCP process"
            label += "es)" if (processes or default_processes) > 1 else ")"
            try:
                with PeakRss(proc.pid) as rss:
                    for senders in (1, 4):
                        results[(peer, senders)] = measure(
                            label,
                            lambda f, s, port=port: send(port, "SPINEIMG", f, s),
                            series[(peer, senders)],
                            senders,
                        )
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            print(f"  {label}: peak RSS while receiving {rss.peak / 1e6:.0f} MB")

        proc, port = start_bare_scp(workdir)
        try:
            for senders in (1, 4):
                results[("bare-scp", senders)] = measure(
                    "bare pynetdicom SCP",
                    lambda f, s: send(port, "BARESCP", f, s),
                    series[("bare-scp", senders)],
                    senders,
                )
        finally:
            proc.terminate()
            proc.wait(timeout=30)

        with OrthancServer(workdir / "orthanc") as orthanc:
            for senders in (1, 4):
                results[("orthanc", senders)] = measure(
                    "orthanc",
                    lambda f, s: send(orthanc.dicom_port, orthanc.aet, f, s),
                    series[("orthanc", senders)],
                    senders,
                )
        print("ratios (instances/s):")
        for senders in (1, 4):
            ours = results[("imaging", senders)]
            orthanc_rate = results[("orthanc", senders)]
            print(
                f"  {senders} sender(s): imaging / orthanc {ours / orthanc_rate:.2f}x"
                f"  imaging / bare pynetdicom SCP {ours / results[('bare-scp', senders)]:.2f}x"
                f"  imaging / imaging on 1 process {ours / results[('imaging-1', senders)]:.2f}x"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
