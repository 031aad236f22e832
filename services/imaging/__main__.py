"""``python -m services.imaging serve``: the HTTP API and the DICOM SCP in one process."""

from __future__ import annotations

import argparse

import uvicorn

from services.common.logging import configure_logging
from services.imaging.app import create_app
from services.imaging.settings import ImagingSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.imaging")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the HTTP API and the DICOM SCP")
    args = parser.parse_args(argv)
    if args.command == "serve":
        settings = ImagingSettings()
        configure_logging(settings.log_level)
        uvicorn.run(
            create_app(settings),
            host=settings.http_host,
            port=settings.http_port,
            log_config=None,
            access_log=False,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
