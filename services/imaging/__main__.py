"""``python -m services.imaging serve | worker | backfill | retrieve-cohort | analyze PATH``.

``serve`` runs the HTTP API and the DICOM SCP in one process (and the analysis threads in
the embedded engine), with ``IMAGING_DICOM_PROCESSES - 1`` more SCP processes on its port
(``scp-helper``, started by ``serve`` only); ``worker`` runs a Celery analysis worker
(``IMAGING_QUEUE=celery``);
``backfill`` analyses a cohort's studies again and reports what changed;
``retrieve-cohort`` brings each operated patient's pre- and post-operative studies in from
the PACS (resumable, paced) and reports per patient; ``analyze``
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


def _retrieve_cohort(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from services.imaging.intake.cohort import entries_from_csv, entries_from_fhir, statuses
    from services.imaging.runtime import build_cohort_tool
    from services.imaging.settings import ImagingSettings

    settings = ImagingSettings()
    try:
        retrieval, fhir = build_cohort_tool(settings)
        if args.list:
            entries = entries_from_csv(args.list.read_text(encoding="utf-8-sig"))
        elif fhir is not None:
            with fhir:
                entries = entries_from_fhir(fhir, mrn_system=settings.mrn_system)
        else:
            raise ValueError("give --list FILE, or set IMAGING_FHIR_URL to list the cohort")
    except (ValueError, OSError) as exc:
        print(f"retrieve-cohort: {exc}", file=sys.stderr)
        return 2
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[instances]} instances"),
        disable=args.json or not sys.stderr.isatty(),
    ) as bar:
        task = bar.add_task("studies", total=2 * len(entries), instances=0)
        counted = {"instances": 0}

        def progress(what: str, instances: int) -> None:
            counted["instances"] += instances
            bar.update(task, advance=1, description=what[:40], instances=counted["instances"])

        report = retrieval.run(entries, progress=progress)
    if args.json:
        print(json.dumps({"report": report.as_json(), "patients": statuses(retrieval.engine)}))
    else:
        print(report.text())
        for item in statuses(retrieval.engine):
            print(f"  {item['patient_id']:>12} {item['surgery_date']}  {item['status']}")
    return 0 if report.failed == 0 else 1


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
    cohort = sub.add_parser("retrieve-cohort", help="retrieve the cohort's studies from the PACS")
    cohort.add_argument("--list", type=Path, help="CSV: PatientID, SurgeryDate[, Group]")
    cohort.add_argument("--json", action="store_true", help="print the report as JSON")
    analyze = sub.add_parser("analyze", help="measure the study in a folder of DICOM files")
    analyze.add_argument("path", type=Path)
    analyze.add_argument("--json", action="store_true", help="print the result as JSON")
    analyze.add_argument("--key-images", type=Path, help="write the key images (PNG) here")
    sub.add_parser("scp-helper", help="(started by serve) one more SCP process on its port")
    args = parser.parse_args(argv)
    if args.command == "scp-helper":
        from services.imaging.intake.scp_pool import run_helper

        return run_helper()
    if args.command == "analyze":
        return _analyze(args)
    if args.command == "backfill":
        return _backfill(args)
    if args.command == "retrieve-cohort":
        return _retrieve_cohort(args)
    if args.command == "worker":
        # The engine's worker processes build their own parts (runtime.build_worker). The
        # analysis libraries are loaded here, before the pool forks: the children share
        # them rather than each importing them on its first job.
        import services.imaging.analysis.pipeline  # noqa: F401
        from services.imaging.runtime import build_producer
        from services.imaging.settings import ImagingSettings

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
