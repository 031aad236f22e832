"""``python -m services.outcomes serve | import-registry FILE``: the FHIR R4 server, and the
import of the clinical registry's export into it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from services.common.serve import serve
from services.outcomes.app import create_app
from services.outcomes.settings import OutcomesSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.outcomes")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the FHIR server")
    registry = sub.add_parser("import-registry", help="load a registry export (CSV or XLSX)")
    registry.add_argument("file", type=Path)
    registry.add_argument("--mapping", type=Path, help="TOML mapping (default: KEOPS layout)")
    registry.add_argument("--dry-run", action="store_true", help="check and report only")
    registry.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.command == "import-registry":
        return _import_registry(args)
    if args.command == "serve":
        settings = OutcomesSettings()
        serve(
            create_app,
            settings,
            factory_path="services.outcomes.app:create_app",
            workers=settings.workers,
        )
    return 0


def _import_registry(args: argparse.Namespace) -> int:
    from services.common.db import make_engine, upgrade_schema
    from services.outcomes.app import MIGRATIONS
    from services.outcomes.registry.importer import RegistryImporter
    from services.outcomes.registry.mapping import MappingError, load_mapping
    from services.outcomes.registry.table import TableError

    settings = OutcomesSettings()
    try:
        mapping = load_mapping(args.mapping or settings.registry_mapping)
        data = args.file.read_bytes()
    except (MappingError, OSError) as exc:
        print(f"import-registry: {exc}", file=sys.stderr)
        return 2
    engine = make_engine(settings.resolved_database_url)
    upgrade_schema(engine, MIGRATIONS)
    importer = RegistryImporter(engine, mapping, mrn_system=settings.mrn_system)
    try:
        report = importer.run(args.file.name, data, dry_run=args.dry_run)
    except TableError as exc:
        print(f"import-registry: {args.file.name}: {exc}; nothing was written", file=sys.stderr)
        return 2
    print(json.dumps(report.as_json(), indent=2) if args.json else report.text())
    return 0 if report.summary["patients_rejected"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
