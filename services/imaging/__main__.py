"""``python -m services.imaging serve | worker | backfill | analyze PATH``.

``serve`` runs the HTTP API and the DICOM SCP in one process (and the analysis threads in
the embedded engine); ``worker`` runs a Celery analysis worker (``IMAGING_QUEUE=celery``);
``backfill`` analyses a cohort's studies again and reports what changed; ``analyze``
measures the study in a folder of DICOM files and prints the result (the API's JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _analyze(args: argparse.Namespace) -> int:
    from services.imaging.analysis.pipeline import AnalysisInputError, analyze_datasets, read_folder

    try:
        analysis = analyze_datasets(read_folder(args.path), key_images=bool(args.key_images))
    except AnalysisInputError as exc:
        print(f"analyze: {exc}", file=sys.stderr)
        return 2
    result = analysis.result.to_contract()
    if args.key_images:
        args.key_images.mkdir(parents=True, exist_ok=True)
        for image in analysis.key_images:
            (args.key_images / f"{image.name}.png").write_bytes(image.png)
    if args.json:
        print(result.to_json())
        return 0
    print(f"study {result.study_instance_uid} ({result.modality}): {result.status}")
    for warning in result.warnings:
        print(f"  warning: {warning}")
    for m in result.measurements:
        where = m.level or f"level #{m.level_index}"
        value = f"{m.value:.1f} {m.unit}" if m.value is not None else m.reason
        print(f"  {where:8} {m.side or '':6} {m.quantity:18} {value}")
    return 0


def _backfill(args: argparse.Namespace) -> int:
    from services.imaging.jobs.backfill import run_backfill, select_studies
    from services.imaging.runtime import build_producer
    from services.imaging.settings import ImagingSettings

    engine, queue = build_producer(ImagingSettings())
    studies = select_studies(engine, patient_id=args.patient_id, since=args.since)
    report = run_backfill(engine, queue, studies, wait=not args.no_wait, timeout=args.timeout)
    print(json.dumps(report.as_json(), indent=2) if args.json else report.text())
    return 0 if report.summary["failed"] == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.imaging")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the HTTP API and the DICOM SCP")
    worker = sub.add_parser("worker", help="run a Celery analysis worker")
    worker.add_argument("--concurrency", type=int, help="processes (default from settings)")
    backfill = sub.add_parser("backfill", help="analyse complete studies again, report changes")
    backfill.add_argument("--patient-id", help="only this patient's studies")
    backfill.add_argument("--since", help="only studies from this date (YYYY-MM-DD)")
    backfill.add_argument("--no-wait", action="store_true", help="queue and return")
    backfill.add_argument("--timeout", type=float, default=24 * 3600, help="seconds to wait")
    backfill.add_argument("--json", action="store_true", help="print the report as JSON")
    analyze = sub.add_parser("analyze", help="measure the study in a folder of DICOM files")
    analyze.add_argument("path", type=Path)
    analyze.add_argument("--json", action="store_true", help="print the result as JSON")
    analyze.add_argument("--key-images", type=Path, help="write the key images (PNG) here")
    args = parser.parse_args(argv)
    if args.command == "analyze":
        return _analyze(args)
    if args.command == "backfill":
        return _backfill(args)
    if args.command == "worker":
        from services.imaging.runtime import build_producer
        from services.imaging.settings import ImagingSettings

        # The engine's worker processes build their own parts (runtime.build_worker).
        _, queue = build_producer(ImagingSettings())
        try:
            queue.engine.run_worker(args.concurrency)
        except ValueError as exc:
            print(f"worker: {exc}", file=sys.stderr)
            return 2
        return 0
    from services.common.serve import serve
    from services.imaging.app import create_app
    from services.imaging.settings import ImagingSettings

    serve(create_app, ImagingSettings())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
