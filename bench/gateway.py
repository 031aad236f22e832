"""Gateway benchmark: 1,000 cases (5 levels x 2 sides, two imaging time points, 8 PROM
time points, complications) behind the real imaging and outcomes services, each service in
its own process on loopback.

Seeding: the outcomes server receives every patient as a FHIR transaction over HTTP; the
imaging index is written directly with 2,000 studies and their measurement sets through
the imaging service's own models (analysing 2,000 phantoms would take hours; the
analysis has its own benchmark, bench/analysis.py).

Prints: GET /api/cases/{id} p50/p95 (researcher and clinician) and, as the peer, the same
three upstream requests made directly; the cohort summary cold (snapshot load) and warm;
the CSV export of the whole cohort.

    python bench/gateway.py [--cases 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from sqlmodel import Session

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.common import vocabulary  # noqa: E402
from services.common.auth import Authenticator, AuthSettings  # noqa: E402
from services.common.db import make_engine, sqlite_url_for, upgrade_schema  # noqa: E402
from services.gateway.privacy import Pseudonymizer  # noqa: E402
from services.imaging.analysis.report import ALGORITHM_NAME, ALGORITHM_VERSION  # noqa: E402
from services.imaging.models import MeasurementSet, Series, Study  # noqa: E402
from services.imaging.runtime import MIGRATIONS as IMAGING_MIGRATIONS  # noqa: E402
from tests.harness.net import free_port, wait_until  # noqa: E402
from tools.demo.cohort import PatientPlan, plan_patient, surgeon_resources, transaction  # noqa: E402

KEY = "bench-signing-key-" + "0123456789abcdef" * 2
PSEUDONYM_KEY = "bench-pseudonym-key-" + "x" * 32
LEVELS = vocabulary.LEVELS


def start(module: str, env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "serve"],
        env={**os.environ, **env, "AUTH_SECRET_KEY": KEY, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )

    def up() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    if not wait_until(up, 60):
        proc.kill()
        raise RuntimeError(f"{module} did not start")
    return proc


def seed_imaging(data_dir: Path, plans: list[PatientPlan]) -> int:
    """Two studies per patient (pre 14-33 days before, post 2 days after) with results."""
    engine = make_engine(sqlite_url_for(data_dir / "imaging.db"))
    upgrade_schema(engine, IMAGING_MIGRATIONS)
    rng = np.random.default_rng(1)
    now = datetime.now(UTC)
    studies: list[Any] = []
    for plan in plans:
        for when, day, gain in (
            ("pre", plan.pre_imaging_date, 0.0),
            ("post", plan.post_imaging_date, 1.0),
        ):
            uid = f"2.25.{plan.index}{1 if when == 'pre' else 2}{rng.integers(10**12)}"
            measurements = []
            for level in LEVELS:
                operated = level in plan.levels
                if plan.modality == "CT":
                    for side in ("left", "right"):
                        value = rng.normal(12.5, 2.0) + (3.2 * gain if operated else 0)
                        measurements.append(("foraminal_height", level, side, value))
                    measurements.append(
                        ("disc_height", level, None, rng.normal(8, 1.5) + 3 * gain * operated)
                    )
                else:
                    area = rng.normal(150, 30) * (0.45 if operated and not gain else 1.0)
                    measurements.append(("dural_sac_area", level, None, area))
                    measurements.append(("dural_sac_volume", level, None, area * 38))
            result = {
                "study_instance_uid": uid,
                "modality": plan.modality,
                "status": "ok",
                "warnings": [],
                "algorithm": {"name": ALGORITHM_NAME, "version": ALGORITHM_VERSION},
                "measurements": [
                    {
                        "quantity": q,
                        "level": level,
                        "level_index": LEVELS.index(level),
                        "side": side,
                        "value": round(float(v), 2),
                        "unit": vocabulary.QUANTITIES[vocabulary.QuantityName(q)].unit,
                        "series_instance_uid": uid + ".1",
                        "status": "ok",
                        "reason": None,
                        "sop_instance_uid": None,
                    }
                    for q, level, side, v in measurements
                ],
                "selection": [],
                "timings_s": {},
            }
            studies += [
                Study(
                    study_instance_uid=uid,
                    patient_id=plan.mrn,
                    patient_name=f"{plan.family}^{plan.given}",
                    study_date=day.strftime("%Y%m%d"),
                    state="complete",
                    first_received_at=now,
                    last_received_at=now,
                    completed_at=now,
                ),
                Series(
                    series_instance_uid=uid + ".1", study_instance_uid=uid, modality=plan.modality
                ),
                MeasurementSet(
                    study_instance_uid=uid,
                    study_version=1,
                    algorithm_name=ALGORITHM_NAME,
                    algorithm_version=ALGORITHM_VERSION,
                    status="ok",
                    result=json.dumps(result),
                    created_at=now,
                ),
            ]
    with Session(engine) as session:
        session.add_all([row for row in studies if isinstance(row, Study)])
        session.flush()  # the parents first: series and results refer to them
        session.add_all([row for row in studies if not isinstance(row, Study)])
        session.commit()
    engine.dispose()
    return len(studies) // 3


def seed_outcomes(url: str, token: str, plans: list[PatientPlan]) -> tuple[dict[str, str], int]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
        surgeons = []
        for resource in surgeon_resources():
            response = client.post("/Practitioner", json=resource)
            surgeons.append(f"Practitioner/{response.json()['id']}")

        def post(plan: PatientPlan) -> tuple[str, str, int]:
            bundle = transaction(plan, surgeons)
            response = client.post("/", json=bundle)
            response.raise_for_status()
            location = next(
                e["response"]["location"]
                for e in response.json()["entry"]
                if "/Procedure/" in e["response"]["location"]
            )
            return plan.mrn, location.split("/Procedure/")[1].split("/")[0], len(bundle["entry"])

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(post, plans))
    return {mrn: case for mrn, case, _ in results}, sum(n for *_, n in results)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def percentiles(samples: list[float]) -> str:
    ms = sorted(1000 * s for s in samples)
    p95 = ms[int(0.95 * (len(ms) - 1))]
    return f"p50 {statistics.median(ms):6.1f} ms  p95 {p95:6.1f} ms  max {ms[-1]:6.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    plans = [plan_patient(i) for i in range(args.cases)]
    auth = Authenticator(AuthSettings(secret_key=KEY))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        seconds, studies = timed(lambda: seed_imaging(root / "imaging", plans))
        print(f"imaging index: {studies} studies with measurement sets written in {seconds:.1f} s")
        ports = {name: free_port() for name in ("imaging", "outcomes", "gateway")}
        procs = [
            start(
                "services.imaging",
                {
                    "IMAGING_DATA_DIR": str(root / "imaging"),
                    "IMAGING_HTTP_PORT": str(ports["imaging"]),
                    "IMAGING_DICOM_PORT": str(free_port()),
                    "IMAGING_ANALYSIS_ENABLED": "false",
                },
                ports["imaging"],
            ),
            start(
                "services.outcomes",
                {
                    "OUTCOMES_DATA_DIR": str(root / "outcomes"),
                    "OUTCOMES_HTTP_PORT": str(ports["outcomes"]),
                },
                ports["outcomes"],
            ),
        ]
        try:
            outcomes_url = f"http://127.0.0.1:{ports['outcomes']}/fhir"
            imaging_url = f"http://127.0.0.1:{ports['imaging']}"
            token = auth.issue_token("bench", "system/*.cruds")
            seconds, (cases, resources) = timed(lambda: seed_outcomes(outcomes_url, token, plans))
            print(
                f"outcomes: {len(cases)} patients, {resources} resources in {seconds:.1f} s "
                f"({resources / seconds:.0f} resources/s)"
            )
            procs.append(
                start(
                    "services.gateway",
                    {
                        "GATEWAY_DATA_DIR": str(root / "gateway"),
                        "GATEWAY_HTTP_PORT": str(ports["gateway"]),
                        "GATEWAY_IMAGING_URL": imaging_url,
                        "GATEWAY_OUTCOMES_URL": outcomes_url,
                        "GATEWAY_PSEUDONYM_KEY": PSEUDONYM_KEY,
                        "GATEWAY_COHORT_MAX_AGE_SECONDS": "3600",
                    },
                    ports["gateway"],
                )
            )
            gateway = f"http://127.0.0.1:{ports['gateway']}"
            sample = random.Random(5).sample(sorted(cases.values()), min(args.requests, len(cases)))
            mrn_of_case = {case: mrn for mrn, case in cases.items()}
            report: dict[str, str] = {}
            bearer = auth.issue_token("bench", "gateway.read", role="researcher")
            with httpx.Client(
                base_url=gateway, headers={"Authorization": f"Bearer {bearer}"}, timeout=300
            ) as c:
                cold, first = timed(lambda: c.get("/api/cohort/summary").json())
                warm = [
                    timed(lambda: c.get("/api/cohort/summary").raise_for_status())[0]
                    for _ in range(5)
                ]
                group = [
                    timed(
                        lambda g=g: c.get(
                            "/api/cohort/summary", params={"group": g}
                        ).raise_for_status()
                    )[0]
                    for g in vocabulary.GROUP_CODES
                ]
                csv_seconds, csv_response = timed(lambda: c.get("/api/export/cases.csv"))
                plot_seconds, _ = timed(
                    lambda: c.get(
                        "/api/cohort/plots/paired.png", params={"quantity": "foraminal_height"}
                    )
                )
            pseudonyms = Pseudonymizer(PSEUDONYM_KEY.encode())
            for role in ("researcher", "clinician"):
                bearer = auth.issue_token("bench", "gateway.read", role=role)
                # A researcher names a case by its pseudonym (the EHR id is a 404 to them).
                named = [pseudonyms.case(p) if role == "researcher" else p for p in sample]
                with httpx.Client(
                    base_url=gateway, headers={"Authorization": f"Bearer {bearer}"}, timeout=60
                ) as c:
                    c.get(f"/api/cases/{named[0]}").raise_for_status()  # warm the connections
                    samples = [
                        timed(lambda case=case: c.get(f"/api/cases/{case}").raise_for_status())[0]
                        for case in named
                    ]
                report[f"GET /api/cases/{{id}} ({role})"] = percentiles(samples)
            # The peer: the same four upstream requests, made directly and in sequence.
            fhir_headers = {"Authorization": f"Bearer {token}"}
            imaging_token = auth.issue_token("bench", "imaging.read")
            with (
                httpx.Client(headers=fhir_headers, timeout=60) as f,
                httpx.Client(headers={"Authorization": f"Bearer {imaging_token}"}, timeout=60) as i,
            ):
                direct = []
                for case in sample:

                    def four(case: str = case) -> None:
                        bundle = f.get(
                            f"{outcomes_url}/Procedure",
                            params=[
                                ("_id", case),
                                ("_include", "Procedure:subject"),
                                ("_include", "Procedure:performer"),
                            ],
                        ).json()
                        subject = bundle["entry"][0]["resource"]["subject"]["reference"]
                        f.get(
                            f"{outcomes_url}/Observation",
                            params={"subject": subject, "_count": "1000"},
                        ).raise_for_status()
                        i.get(
                            f"{imaging_url}/api/results", params={"PatientID": mrn_of_case[case]}
                        ).raise_for_status()
                        i.get(
                            f"{imaging_url}/api/cohort", params={"PatientID": mrn_of_case[case]}
                        ).raise_for_status()

                    direct.append(timed(four)[0])
            report["peer: the 4 upstream requests, direct"] = percentiles(direct)
            report["cohort summary, first request after start"] = (
                f"{cold:.2f} s (the start-up snapshot load took {first['snapshot_seconds']:.2f} s)"
            )
            report["cohort summary, warm (mean of 5)"] = f"{statistics.mean(warm):.2f} s"
            report["cohort summary per group, warm"] = ", ".join(f"{s:.2f} s" for s in group)
            rows = csv_response.text.count("\n") - 1
            report["CSV export, whole cohort"] = (
                f"{csv_seconds:.2f} s, {rows} rows, {len(csv_response.content) / 1e6:.1f} MB"
            )
            report["paired plot PNG, whole cohort"] = f"{plot_seconds:.2f} s"
            counts = first["summary"]["counts"]
            print(f"cohort: {counts['cases']} cases, {counts['with_pair']} with a pre/post pair")
            width = max(len(k) for k in report)
            for key, value in report.items():
                print(f"{key:<{width}}  {value}")
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=30)


if __name__ == "__main__":
    main()
