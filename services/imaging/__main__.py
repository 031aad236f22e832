"""``python -m services.imaging serve | analyze PATH [--json]``.

``serve`` runs the HTTP API and the DICOM SCP in one process; ``analyze`` measures the study
in a folder of DICOM files and prints the result (the same JSON the API serves).
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
    result = analysis.result.as_json()
    if args.key_images:
        args.key_images.mkdir(parents=True, exist_ok=True)
        for image in analysis.key_images:
            (args.key_images / f"{image.name}.png").write_bytes(image.png)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"study {result['study_instance_uid']} ({result['modality']}): {result['status']}")
    for warning in result["warnings"]:
        print(f"  warning: {warning}")
    for m in result["measurements"]:
        where = m["level"] or f"level #{m['level_index']}"
        value = f"{m['value']:.1f} {m['unit']}" if m["value"] is not None else m["reason"]
        print(f"  {where:8} {m['side'] or '':6} {m['quantity']:18} {value}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.imaging")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the HTTP API and the DICOM SCP")
    analyze = sub.add_parser("analyze", help="measure the study in a folder of DICOM files")
    analyze.add_argument("path", type=Path)
    analyze.add_argument("--json", action="store_true", help="print the result as JSON")
    analyze.add_argument("--key-images", type=Path, help="write the key images (PNG) here")
    args = parser.parse_args(argv)
    if args.command == "analyze":
        return _analyze(args)
    from services.common.serve import serve
    from services.imaging.app import create_app
    from services.imaging.settings import ImagingSettings

    serve(create_app, ImagingSettings())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
