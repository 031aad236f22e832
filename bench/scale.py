"""Scale benchmark: 40 phantom studies (20 synthetic patients, pre- and post-operative CT
or MR) sent by 4 parallel dcmtk ``storescu`` senders to the imaging service, timed from the
first instance sent to the last measurement stored, in three engines:

* embedded: SQLite, one analysis thread in the service (the default);
* Celery with 1 worker process, then with 2, on PostgreSQL and Redis (real servers).

The peer is Orthanc receiving the same 40 studies from the same 4 senders (receive only,
it does not analyse): the ingest share of the time. Prints studies/minute per engine, the
speed-up from 1 to 2 workers, the mean analysis time per study and, from it, what a
100,000-study back-fill costs on N workers.

    python bench/scale.py [--patients 20] [--senders 4]
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
sys.path.insert(0, str(ROOT))

from sqlmodel import Session, select  # noqa: E402

from services.demo.cohort import phantom_specs, plan_patient  # noqa: E402
from services.imaging.models import AnalysisJob  # noqa: E402
from services.imaging.phantom import write_phantom  # noqa: E402
from tests.e2e.conftest import _worker_env  # noqa: E402
from tests.harness.dcmtk import storescu  # noqa: E402
from tests.harness.imaging import ImagingServer  # noqa: E402
from tests.harness.net import wait_until  # noqa: E402
from tests.harness.orthanc import OrthancServer  # noqa: E402
from tests.harness.postgres import PostgresServer  # noqa: E402
from tests.harness.redis import RedisServer  # noqa: E402
from tests.harness.workers import CeleryWorker  # noqa: E402


def render(folder: Path, patients: int) -> list[list[Path]]:
    """The studies' files, rendered once and kept for the next runs."""
    studies = []
    for i in range(patients):
        plan = plan_patient(i)
        for name, spec in zip(("pre", "post"), phantom_specs(plan), strict=True):
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


def run_engine(
    name: str, workdir: Path, studies: list[list[Path]], senders: int, **options: Any
) -> dict[str, Any]:
    workers_n = options.pop("workers", 0)
    redis: RedisServer | None = options.pop("redis", None)
    imaging = ImagingServer(workdir / name, study_quiet_seconds=2.0, **options).start()
    workers = []
    try:
        if workers_n:
            assert redis is not None
            env = _worker_env(imaging, redis, 3600)
            workers = [
                CeleryWorker(f"{name}-{n}", env, workdir / "logs").start() for n in range(workers_n)
            ]
        started = time.perf_counter()
        sending = send_all(imaging.dicom_port, imaging.ae_title, studies, senders)

        def finished() -> bool:
            with Session(imaging.app.state.engine) as session:
                states = session.exec(select(AnalysisJob.state)).all()
            return len(states) == len(studies) and all(s in ("done", "failed") for s in states)

        assert wait_until(finished, timeout=3600, interval=0.5)
        total = time.perf_counter() - started
        with Session(imaging.app.state.engine) as session:
            jobs = session.exec(select(AnalysisJob)).all()
        durations = [
            (j.finished_at - j.started_at).total_seconds()
            for j in jobs
            if j.started_at and j.finished_at
        ]
        failed = sum(j.state == "failed" for j in jobs)
    finally:
        for worker in workers:
            worker.stop()
        imaging.stop()
    return {
        "engine": name,
        "seconds": total,
        "sending": sending,
        "per_minute": len(studies) * 60 / total,
        "analysis_mean": statistics.mean(durations),
        "failed": failed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=20)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--workdir", type=Path, default=ROOT / "var" / "bench" / "scale")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    studies = render(args.workdir / "phantoms", args.patients)
    instances = sum(len(s) for s in studies)
    print(
        f"{len(studies)} studies, {instances} instances "
        f"(rendered in {time.perf_counter() - t:.0f} s)"
    )

    with OrthancServer(args.workdir / "orthanc-run") as orthanc:
        peer = send_all(orthanc.dicom_port, orthanc.aet, studies, args.senders)
    print(f"peer: Orthanc receives them in {peer:.1f} s ({instances / peer:.0f} instances/s)")

    results = [run_engine("embedded", args.workdir / "runs", studies, args.senders)]
    with PostgresServer() as pg, RedisServer() as redis:
        for n in (1, 2):
            results.append(
                run_engine(
                    f"celery-{n}",
                    args.workdir / "runs",
                    studies,
                    args.senders,
                    queue="celery",
                    broker_url=redis.url,
                    database_url=pg.fresh_database(f"scale_{n}"),
                    workers=n,
                    redis=redis,
                )
            )
    print(
        f"\n{'engine':10} {'first instance → last result':>28} {'sending':>8} "
        f"{'studies/min':>12} {'analysis/study':>15} {'failed':>7}"
    )
    for r in results:
        print(
            f"{r['engine']:10} {r['seconds']:>26.1f} s {r['sending']:>6.1f} s "
            f"{r['per_minute']:>12.1f} {r['analysis_mean']:>13.1f} s {r['failed']:>7}"
        )
    one, two = results[1], results[2]
    print(
        f"\nspeed-up 1 → 2 Celery workers: {one['seconds'] / two['seconds']:.2f}x "
        f"(2 cores here: ~1.8x is the ceiling)"
    )
    print(
        f"ingest share: Orthanc alone receives the same studies in {peer:.1f} s; "
        f"our SCP took {results[0]['sending']:.1f} s while analysing"
    )
    per_study = statistics.mean(r["analysis_mean"] for r in results[1:])
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
