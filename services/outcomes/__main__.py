"""``python -m services.outcomes serve``: the FHIR R4 server."""

from __future__ import annotations

import argparse

from services.common.serve import serve
from services.outcomes.app import create_app
from services.outcomes.settings import OutcomesSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.outcomes")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the FHIR server")
    args = parser.parse_args(argv)
    if args.command == "serve":
        settings = OutcomesSettings()
        serve(
            create_app,
            settings,
            factory_path="services.outcomes.app:create_app",
            workers=settings.workers,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
