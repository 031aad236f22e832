"""``python -m services.imaging serve``: the HTTP API and the DICOM SCP in one process."""

from __future__ import annotations

import argparse

from services.common.serve import serve
from services.imaging.app import create_app
from services.imaging.settings import ImagingSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.imaging")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the HTTP API and the DICOM SCP")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(create_app, ImagingSettings())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
