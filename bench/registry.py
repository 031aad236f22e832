"""Registry import benchmark: a 1,000-patient KEOPS-style export (Windows-1252, ``;``,
day-first dates, decimal commas) uploaded to the outcomes service's ``POST
/registry/import``, then uploaded again (a re-import writes nothing), side by side with
the peer: the same patients posted as one FHIR transaction Bundle each, as an EHR feed
would (the raw write rate of the same server). The server runs as its own process.

    python bench/registry.py [--patients 1000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # not bench/: its fhir.py would shadow the fhir package

from bench._servers import start_service, stop, token  # noqa: E402
from tools.demo.cohort import PatientPlan, plan_patient, surgeon_resources, transaction  # noqa: E402
from tools.demo.registry import export  # noqa: E402


def upload(base: str, data: bytes) -> tuple[float, dict[str, int]]:
    headers = {"Authorization": f"Bearer {token('registry.import')}", "Content-Type": "text/csv"}
    start = time.perf_counter()
    response = httpx.post(
        f"{base}/registry/import",
        params={"filename": "keops.csv"},
        content=data,
        headers=headers,
        timeout=3600,
    )
    seconds = time.perf_counter() - start
    response.raise_for_status()
    return seconds, response.json()["summary"]


def post_transactions(base: str, plans: list[PatientPlan]) -> float:
    headers = {
        "Authorization": f"Bearer {token('system/*.cruds')}",
        "Content-Type": "application/fhir+json",
        "Prefer": "return=minimal",
    }
    with httpx.Client(base_url=f"{base}/fhir", headers=headers, timeout=600) as http:
        refs = []
        for resource in surgeon_resources():
            saved = http.post("/Practitioner", json=resource)
            saved.raise_for_status()
            refs.append(saved.headers["location"].split("/_history")[0].split("/fhir/")[-1])
        bundles = [transaction(plan, refs) for plan in plans]
        start = time.perf_counter()
        for bundle in bundles:
            http.post("", json=bundle).raise_for_status()
        return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, default=1000)
    args = parser.parse_args()
    plans = [plan_patient(i, start=date(2021, 1, 4)) for i in range(args.patients)]
    data, _ = export(plans, defects=False)
    print(f"export: {args.patients} patients, {len(data) / 1e6:.2f} MB (KEOPS layout, cp1252)")
    with tempfile.TemporaryDirectory(prefix="bench-registry-") as tmp:
        proc, base = start_service("outcomes", Path(tmp) / "import", {})
        try:
            first, summary = upload(base, data)
            again, repeat = upload(base, data)
        finally:
            stop(proc)
        written = summary["resources_created"]
        print(
            f"  registry import    {first:7.1f} s  {args.patients / first:6.1f} patients/s  "
            f"{written / first:7.1f} resources/s  ({summary['patients_loaded']} loaded, "
            f"{written} resources)"
        )
        print(
            f"  re-import (no-op)  {again:7.1f} s  {args.patients / again:6.1f} patients/s  "
            f"({repeat['resources_created']} created, {repeat['resources_updated']} updated)"
        )
        proc, base = start_service("outcomes", Path(tmp) / "peer", {})
        try:
            peer = post_transactions(base, plans)
        finally:
            stop(proc)
        print(
            f"  peer: FHIR transactions, one per patient  {peer:7.1f} s  "
            f"{args.patients / peer:6.1f} patients/s"
        )
        print(
            f"ratio import / FHIR transactions: {peer / first:.2f}x (re-import {peer / again:.2f}x)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
