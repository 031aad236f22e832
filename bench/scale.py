"""Scale benchmark: 40 phantom studies (20 synthetic patients, pre- and post-operative CT
or MR at the demo's resolution) sent by 4 parallel dcmtk ``storescu`` senders to the imaging
service, in three engines:

* embedded: SQLite, one analysis thread in the service (the default);
* Celery with 1 worker process, then with 2, on PostgreSQL and Redis (real servers).

Two measurements per engine: ``e2e``, analysis running while the studies arrive, timed from
the first instance sent to the last result stored; ``drain``, the 40 studies received and
queued first, then the workers started, timed from their start to the last result (the
analysis throughput, which is what scales with workers). The peer is Orthanc receiving the
same 40 studies from the same 4 senders (receive only). Prints studies/minute, the speed-up
from 1 to 2 workers, the mean analysis time per study and, from it, what a 100,000-study
back-fill costs on N workers.

    python bench/scale.py [--patients 20] [--senders 4] [--modes e2e drain] [--skip-peer]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # not bench/: its fhir.py would shadow the fhir package

from sqlmodel import Session, select  # noqa: E402

from bench._servers import dcmtk_nodelay  # noqa: E402
from services.imaging.models import AnalysisJob  # noqa: E402
from tests.harness.dcmtk import storescu  # noqa: E402
from tests.harness.imaging import ImagingServer  # noqa: E402
from tests.harness.net import wait_until  # noqa: E402
from tests.harness.orthanc import OrthancServer  # noqa: E402
from tests.harness.postgres import PostgresServer  # noqa: E402
from tests.harness.redis import RedisServer  # noqa: E402
from tests.harness.workers import CeleryWorker, worker_env  # noqa: E402
from tools.demo.cohort import phantom_specs, plan_patient  # noqa: E402
from tools.phantom import write_phantom  # noqa: E402


def render(folder: Path, patients: int) -> list[list[Path]]:
    """The studies' files, rendered once and kept for the next runs."""
    studies = []
    for i in range(patients):
        plan = plan_patient(i)
        ct = plan.modality == "CT"  # the demo's resolution: 1.2 mm pixels, 1.5 mm slices for CT
        specs = phantom_specs(
            plan, pixel_spacing=1.2 if ct else None, slice_spacing=1.5 if ct else None
        )
        for name, spec in zip(("pre", "post"), specs, strict=True):
            study = folder / f"{plan.mrn}-{name}"
            if not (study / "ground_truth.json").exists():
                write_phantom(spec, study)
            studies.append(sorted(study.glob("*.dcm")))
    return studies


def send_all(port: int, aet: str, studies: list[list[Path]], senders: int) -> float:
    """Each sender sends its share of the studies, one association per study."""
    started = time.perf_counter()

    def send(share: list[list[Path]]) -> None:
        for files in share:
            done = storescu(port, aet, files, calling=f"SENDER{threading.get_ident() % 100}")
            if done.returncode != 0:
                raise RuntimeError(done.stderr[-500:])

    with ThreadPoolExecutor(senders) as pool:
        list(pool.map(send, [studies[n::senders] for n in range(senders)]))
    return time.perf_counter() - started


def _jobs(imaging: ImagingServer) -> list[AnalysisJob]:
    with Session(imaging.app.state.engine) as session:
        return list(session.exec(select(AnalysisJob)).all())


def run_engine(
    name: str,
    workdir: Path,
    studies: list[list[Path]],
    senders: int,
    *,
    drain: bool,
    workers: int = 0,
    redis: RedisServer | None = None,
    **options: Any,
) -> dict[str, Any]:
    """``drain=False``: analysis runs while the studies arrive; the time is from the first
    instance sent to the last result. ``drain=True``: the studies are received and queued
    first, then the workers start; the time is from their start to the last result."""
    label = f"{name}-{'drain' if drain else 'e2e'}"
    if drain and not workers:
        options["analysis_workers"] = 0  # threads started by hand once all is queued
    imaging = ImagingServer(workdir / label, study_quiet_seconds=2.0, **options).start()
    running: list[CeleryWorker] = []

    def start_workers() -> None:
        if workers:
            assert redis is not None
            env = worker_env(imaging.settings, redis.url, 3600)
            running.extend(
                CeleryWorker(f"{label}-{n}", env, workdir / "logs").start() for n in range(workers)
            )
        elif drain:
            runtime = imaging.app.state.runtime
            runtime.queue_engine.workers = 1
            runtime.queue_engine.start(runtime.stop)

    def finished() -> bool:
        states = [j.state for j in _jobs(imaging)]
        return len(states) == len(studies) and all(s in ("done", "failed") for s in states)

    try:
        if not drain:
            start_workers()
        started = time.perf_counter()
        sending = send_all(imaging.dicom_port, imaging.ae_title, studies, senders)
        if drain:
            assert wait_until(lambda: len(_jobs(imaging)) == len(studies), 600, 0.5)
            early = [j for j in _jobs(imaging) if j.state != "queued"]
            if early:  # a drain figure is the workers' alone: fail rather than print it
                raise RuntimeError(
                    f"{label}: {len(early)} of {len(studies)} studies were analysed while "
                    "receiving, before the workers were started; the drain figure would be "
                    "meaningless"
                )
            started = time.perf_counter()
            start_workers()
        assert wait_until(finished, timeout=3600, interval=0.5)
        total = time.perf_counter() - started
        if total < 0.5 * len(studies) * 0.1:
            raise RuntimeError(f"{label}: {total:.1f} s for {len(studies)} studies is impossible")
        jobs = _jobs(imaging)
        durations = [
            (j.finished_at - j.started_at).total_seconds()
            for j in jobs
            if j.started_at and j.finished_at
        ]
    finally:
        for worker in running:
            worker.stop()
        imaging.stop()
    return {
        "engine": label,
        "seconds": total,
        "sending": sending,
        "per_minute": len(studies) * 60 / total,
        "analysis_mean": statistics.mean(durations),
        "failed": sum(j.state == "failed" for j in jobs),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=20)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--workdir", type=Path, default=ROOT / "var" / "bench" / "scale")
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=("e2e", "drain"),
        default=["e2e", "drain"],
        help="e2e: analyse while receiving; drain: receive all, then start the workers",
    )
    parser.add_argument("--skip-peer", action="store_true", help="do not run Orthanc")
    parser.add_argument("--nagle", action="store_true", help="leave dcmtk's Nagle on")
    args = parser.parse_args()
    print(dcmtk_nodelay(args.nagle))
    args.workdir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    studies = render(args.workdir / "phantoms", args.patients)
    instances = sum(len(s) for s in studies)
    print(
        f"{len(studies)} studies, {instances} instances "
        f"(rendered in {time.perf_counter() - t:.0f} s)"
    )

    peer = None
    if not args.skip_peer:
        with OrthancServer(args.workdir / "orthanc-run") as orthanc:
            peer = send_all(orthanc.dicom_port, orthanc.aet, studies, args.senders)
        print(f"peer: Orthanc receives them in {peer:.1f} s ({instances / peer:.0f} instances/s)")

    runs = args.workdir / "runs"
    results = []
    with PostgresServer() as pg, RedisServer() as redis:
        for drain in [m == "drain" for m in args.modes]:
            results.append(run_engine("embedded", runs, studies, args.senders, drain=drain))
            for n in (1, 2):
                tag = f"scale_{n}_{int(drain)}"
                results.append(
                    run_engine(
                        f"celery-{n}",
                        runs,
                        studies,
                        args.senders,
                        drain=drain,
                        queue="celery",
                        broker_url=redis.url,
                        database_url=pg.fresh_database(tag),
                        workers=n,
                        redis=redis,
                    )
                )
    print(
        f"\n{'engine':17} {'time to last result':>20} {'sending':>8} "
        f"{'studies/min':>12} {'analysis/study':>15} {'failed':>7}"
    )
    for r in results:
        print(
            f"{r['engine']:17} {r['seconds']:>18.1f} s {r['sending']:>6.1f} s "
            f"{r['per_minute']:>12.1f} {r['analysis_mean']:>13.1f} s {r['failed']:>7}"
        )
    by = {r["engine"]: r for r in results}
    for mode in args.modes:
        one, two = by[f"celery-1-{mode}"], by[f"celery-2-{mode}"]
        print(
            f"{mode}: speed-up 1 → 2 Celery workers {one['seconds'] / two['seconds']:.2f}x; "
            f"embedded vs 1 worker {by[f'embedded-{mode}']['seconds'] / one['seconds']:.2f}x "
            "(2 cores here: ~1.8x is the ceiling)"
        )
    if peer is not None:
        ours = by.get("embedded-e2e") or results[0]
        print(
            f"ingest: Orthanc alone receives the 40 studies in {peer:.1f} s; our SCP took "
            f"{ours['sending']:.1f} s ({ours['engine']})"
        )
    per_study = statistics.mean(r["analysis_mean"] for r in results)
    print(
        f"\nback-fill of 100,000 studies at {per_study:.1f} s of analysis each "
        "(one core per worker, ingest and delivery not counted):"
    )
    for workers in (1, 8, 32, 100):
        hours = 100_000 * per_study / workers / 3600
        print(f"  {workers:>3} workers: {hours:8.1f} h ({hours / 24:.1f} days)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
