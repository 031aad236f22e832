"""``python -m services.gateway serve``: the research gateway."""

from __future__ import annotations

import argparse

from services.common.serve import serve
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the gateway (API and dashboard)")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(create_app, GatewaySettings())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
