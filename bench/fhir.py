"""FHIR server benchmark: bulk load through transaction Bundles of 100 entries, search
latency and conditional-create throughput, on SQLite (embedded default) and on a real
PostgreSQL started here. The server runs as its own process (uvicorn), the client is
httpx over loopback.

    python bench/fhir.py [--patients 2000] [--observations 100000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from bench._servers import KEY, start_service  # noqa: E402
from services.common import vocabulary  # noqa: E402
from services.common.auth import Authenticator, AuthSettings  # noqa: E402
from services.common.db import make_engine  # noqa: E402
from services.common.fhir import builders as b  # noqa: E402
from services.common.fhir import codes  # noqa: E402
from tests.harness.postgres import PostgresServer  # noqa: E402

PROMS = [("odi", 0, 100), ("back-pain-nrs", 0, 10), ("leg-pain-nrs", 0, 10), ("eq5d-index", 0, 1)]
TIME_POINTS = ["baseline", "day-1", "week-6", "month-3", "month-6", "month-12", "month-24"]
assert set(TIME_POINTS) <= set(vocabulary.TIME_POINT_CODES)


def start_server(
    workdir: Path, database_url: str | None, workers: int
) -> tuple[subprocess.Popen[bytes], str]:
    env = {"OUTCOMES_DATABASE_URL": database_url} if database_url else {}
    proc, url = start_service("outcomes", workdir, env)
    return proc, f"{url}/fhir"


def client(base: str) -> httpx.Client:
    token = Authenticator(AuthSettings(secret_key=KEY)).issue_token("bench", "system/*.cruds")
    return httpx.Client(
        base_url=base,
        timeout=120,
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/fhir+json",
            "Prefer": "return=minimal",
        },
    )


def tx(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def post_entries(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"resource": r, "request": {"method": "POST", "url": r["resourceType"]}} for r in resources
    ]


def load(base: str, patients: int, observations: int) -> tuple[list[str], float]:
    rng = random.Random(7)
    with client(base) as http:
        start = time.perf_counter()
        ids: list[str] = []
        for first in range(0, patients, 100):
            bundle = tx(
                post_entries(
                    [b.patient(f"MRN{n:06d}") for n in range(first, min(first + 100, patients))]
                )
            )
            response = http.post("", json=bundle)
            response.raise_for_status()
            ids.extend(e["response"]["location"].split("/")[-3] for e in response.json()["entry"])
        per_patient = max(observations // patients, 1)
        bundles = []
        batch: list[dict[str, Any]] = []
        for n, pid in enumerate(ids):
            for k in range(per_patient):
                code, low, high = PROMS[k % len(PROMS)]
                value = round(rng.uniform(low, high), 2 if high == 1 else 0)
                day = (n + k * 15) % 730  # two years of follow-up, spread over the cohort
                effective = time.strftime("%Y-%m-%d", time.gmtime(1.7e9 + day * 86400.0))
                batch.append(
                    b.measurement(
                        f"Patient/{pid}",
                        code,
                        value,
                        effective=effective,
                        time_point=TIME_POINTS[k % len(TIME_POINTS)],
                    )
                )
                if len(batch) == 100:
                    bundles.append(tx(post_entries(batch)))
                    batch = []
        if batch:
            bundles.append(tx(post_entries(batch)))

    local = threading.local()

    def send(bundle: dict[str, Any]) -> None:
        if not hasattr(local, "http"):
            local.http = client(base)
        local.http.post("", json=bundle).raise_for_status()

    with ThreadPoolExecutor(max_workers=2) as pool:  # two EHR feeds at once
        list(pool.map(send, bundles))
    seconds = time.perf_counter() - start
    return ids, (len(ids) + sum(len(x["entry"]) for x in bundles)) / seconds


def latencies(base: str, queries: list[dict[str, str]]) -> tuple[float, float]:
    timings = []
    with client(base) as http:
        for params in queries:
            start = time.perf_counter()
            http.get("/Observation", params=params).raise_for_status()
            timings.append((time.perf_counter() - start) * 1000)
    timings.sort()
    return statistics.median(timings), timings[int(len(timings) * 0.95) - 1]


def conditional_creates(base: str, count: int) -> float:
    local = threading.local()

    def one(n: int) -> int:
        if not hasattr(local, "http"):
            local.http = client(base)  # one connection per client thread, as a real feed
        mrn = f"COND{n % (count // 2):06d}"  # every identifier twice: 201 then 200
        response = local.http.post(
            "/Patient",
            json=b.patient(mrn),
            headers={"If-None-Exist": f"identifier={codes.MRN_SYSTEM_DEFAULT}|{mrn}"},
        )
        return int(response.status_code)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(pool.map(one, range(count)))
    seconds = time.perf_counter() - start
    assert statuses.count(201) == count // 2, statuses
    return count / seconds


def run(label: str, workdir: Path, database_url: str | None, args: argparse.Namespace) -> None:
    proc, base = start_server(workdir, database_url, args.workers)
    try:
        ids, rate = load(base, args.patients, args.observations)
        if database_url:
            # What an operator (or autovacuum, a little later) does after a bulk back-fill.
            engine = make_engine(database_url)
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("ANALYZE"))
            engine.dispose()
        rng = random.Random(3)
        odi = f"{codes.PROJECT}|odi"
        by_patient = [{"patient": f"Patient/{rng.choice(ids)}", "code": odi} for _ in range(200)]
        # The data run from 2023-11 to 2025-11: these dates match 5-90 % of it.
        by_date = [
            {"date": f"ge{rng.choice((2024, 2025))}-{rng.randint(1, 10):02d}-01"}
            for _ in range(200)
        ]
        p50a, p95a = latencies(base, by_patient)
        p50b, p95b = latencies(base, by_date)
        cond = conditional_creates(base, args.conditional)
        print(f"{label}:")
        print(f"  bulk load (transactions of 100, 2 feeds): {rate:8.0f} resources/s")
        print(f"  Observation?patient=X&code=Y        p50 {p50a:6.1f} ms  p95 {p95a:6.1f} ms")
        print(f"  Observation?date=ge...              p50 {p50b:6.1f} ms  p95 {p95b:6.1f} ms")
        print(f"  conditional create (4 clients, half 201 / half 200): {cond:6.0f} /s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--observations", type=int, default=100_000)
    parser.add_argument("--conditional", type=int, default=400)
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    args = parser.parse_args()
    print(
        f"{args.patients} patients, {args.observations} Observations, "
        f"{args.workers} server worker process(es)"
    )
    with tempfile.TemporaryDirectory(prefix="bench-fhir-") as tmp:
        run("SQLite", Path(tmp) / "sqlite", None, args)
        with PostgresServer() as postgres:
            run("PostgreSQL", Path(tmp) / "pg", postgres.url, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
