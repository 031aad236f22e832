"""``python -m services.gateway serve | report | install-viewer``: the research gateway, the
study report from the command line (the same report as ``GET /api/report.pdf``), and the
installation of the pinned OHIF viewer it serves at ``/viewer/``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from services.common.serve import serve
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings


async def _report(args: argparse.Namespace) -> int:
    from services.common.auth import Authenticator
    from services.gateway.access import KeyImageLinker
    from services.gateway.analysis import report
    from services.gateway.app import case_source, pseudonymizer
    from services.gateway.cases import View
    from services.gateway.errors import UpstreamError
    from services.gateway.sources import CaseFilter

    settings = GatewaySettings()
    view = View(
        identified=args.view == "identified",
        pseudonymizer=pseudonymizer(settings),
        mrn_system=settings.mrn_system,
        key_image_url=KeyImageLinker(settings.public_base_url or ""),
    )
    async with case_source(settings, Authenticator(settings.auth)) as source:
        try:
            cases, snapshot = await source.cases(view, CaseFilter(group=args.group))
        except UpstreamError as exc:
            print(f"report: {exc.reason}", file=sys.stderr)
            return 2
        numbers = snapshot.case_numbers(view)
    built, data = report.build(
        cases, numbers, as_of=snapshot.as_of, filters={"group": args.group} if args.group else {}
    )
    if args.format == "pdf":
        content = report.pdf(built)
    elif args.format == "html":
        content = report.html(built).encode()
    else:
        content = report.export_zip(data, as_of=snapshot.as_of, pseudonymised=not view.identified)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(content)
    print(f"{args.out}: {len(cases)} cases, {args.format}, {args.view} view")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the gateway (API and dashboard)")
    rep = sub.add_parser("report", help="write the study report or the analysis export")
    rep.add_argument("--format", choices=("pdf", "html", "zip"), default="pdf")
    rep.add_argument("--out", type=Path, required=True)
    rep.add_argument(
        "--view",
        choices=("researcher", "identified"),
        default="researcher",
        help="pseudonymised (default) or identified",
    )
    rep.add_argument("--group", choices=("foraminal-stenosis", "central-stenosis"))
    inst = sub.add_parser(
        "install-viewer", help="fetch, verify and unpack the pinned OHIF build (make viewer)"
    )
    inst.add_argument("--dir", type=Path, help="default: GATEWAY_VIEWER_DIR (var/ohif)")
    inst.add_argument("--tarball", type=Path, help="an already downloaded @ohif/app .tgz")
    args = parser.parse_args(argv)
    if args.command == "install-viewer":
        from services.gateway.viewer import OHIF_VERSION, ViewerInstallError, install

        try:
            build = install(args.dir or GatewaySettings().viewer_dir, tarball=args.tarball)
        except ViewerInstallError as exc:
            print(f"install-viewer: {exc}", file=sys.stderr)
            return 2
        print(f"OHIF {OHIF_VERSION} installed in {build.root}")
        return 0
    if args.command == "report":
        return asyncio.run(_report(args))
    if args.command == "serve":
        serve(create_app, GatewaySettings())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
