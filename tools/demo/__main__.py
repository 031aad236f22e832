"""The main job: ``python -m tools.demo`` (``make demo``).

Starts the three services on embedded defaults (SQLite, local folders, in-process analysis
workers), generates a synthetic cohort (pre- and post-operative CT or MR phantoms with
stenosis and post-operative changes, surgeries, complications, PROMs over two years), sends
the images through the real protocols (C-STORE for half the patients, STOW-RS for the
others) and the outcomes through FHIR (fhirpy), waits for the analyses, prints the cohort
summary and writes an HTML report. Then it serves the dashboard until Ctrl-C; with
``--no-serve`` (or without a terminal) it stops after the report.

When Orthanc is installed it plays the hospital PACS, as in production: the images are
stored into Orthanc, whose Lua rule (``deploy/orthanc``) routes the post-operative studies
to the imaging service, which fetches the pre-operative ones from Orthanc over DICOMweb and
sends its SRs back to it. Without Orthanc (or with ``--no-orthanc``) the images go to the
imaging service directly. Either way the metrics are posted to the outcomes FHIR server.

Every run starts from an empty ``--data-dir`` (default ``var/demo``), so it is re-runnable.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from fhirpy import SyncFHIRClient

from services.common.auth import Authenticator, AuthSettings, BasicUser, hash_password
from services.common.threads import UvicornThread
from services.gateway.app import create_app as gateway_app
from services.gateway.settings import GatewaySettings
from services.imaging.app import create_app as imaging_app
from services.imaging.settings import ImagingSettings
from services.outcomes.app import create_app as outcomes_app
from services.outcomes.settings import OutcomesSettings
from tools.demo.cohort import PatientPlan, phantom_specs, plan_patient, surgeon_resources
from tools.demo.cohort import transaction as fhir_transaction
from tools.demo.orthanc import OrthancServer, dicomweb_plugin, orthanc_binary
from tools.demo.report import html_report, summary_text
from tools.demo.send import c_store, stow
from tools.phantom import PhantomSpec, write_phantom


def _render(spec: PhantomSpec, folder: Path) -> Path:
    write_phantom(spec, folder)
    return folder


def _bar(label: str, done: int, total: int) -> None:
    """A progress bar on a terminal; one line per stage when the output is a file."""
    if not sys.stderr.isatty():
        if done >= total:
            print(f"{label}: {done}/{total}", file=sys.stderr)
        return
    width = 30
    filled = int(width * done / max(total, 1))
    sys.stderr.write(f"\r{label:<22} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.data = Path(args.data_dir)
        key = secrets.token_urlsafe(32)
        self.password = secrets.token_urlsafe(9)
        users = {
            role: BasicUser(
                password_hash=hash_password(self.password, rounds=50_000),
                scope="gateway.read",
                role=role,
            )
            for role in ("researcher", "clinician")
        }
        self.auth = AuthSettings(secret_key=key, basic_users=users)
        self.authenticator = Authenticator(self.auth)
        base = args.base_port
        self.pacs: OrthancServer | None = None
        pacs_options: dict[str, Any] = {}
        if not args.no_orthanc and orthanc_binary() and dicomweb_plugin():
            self.pacs = OrthancServer(self.data / "orthanc", autoroute=True, stable_age=2)
            pacs_options = {
                "pacs_dicomweb_url": self.pacs.dicomweb_url,
                "prior_fetch_enabled": True,
                "results_destination": "stow",
            }
        self.imaging = ImagingSettings(
            data_dir=self.data / "imaging",
            http_port=base + 1,
            dicom_host="127.0.0.1",
            dicom_port=args.dicom_port,
            study_quiet_seconds=2.0,
            completion_poll_seconds=0.5,
            analysis_workers=max(1, min(2, os.cpu_count() or 1)),
            fhir_url=f"http://127.0.0.1:{base + 2}/fhir",
            auth=self.auth,
            **pacs_options,
        )
        self.outcomes = OutcomesSettings(
            data_dir=self.data / "outcomes", http_port=base + 2, auth=self.auth
        )
        self.gateway = GatewaySettings(
            data_dir=self.data / "gateway",
            http_port=base,
            imaging_url=f"http://127.0.0.1:{base + 1}",
            outcomes_url=f"http://127.0.0.1:{base + 2}/fhir",
            pseudonym_key_file=self.data / "secrets" / "pseudonym.key",
            auth=self.auth,
        )
        self.threads: list[UvicornThread] = []

    def token(self, scope: str, role: str | None = None) -> str:
        return self.authenticator.issue_token("demo", scope, role=role)

    def start(self, app: Any, port: int) -> None:
        thread = UvicornThread(app, port)
        thread.start()
        self.threads.append(thread)

    def stop(self) -> None:
        for thread in reversed(self.threads):
            thread.stop()
        self.threads.clear()
        if self.pacs is not None:
            self.pacs.stop()

    def _send(self, plan: PatientPlan, files: list[Path]) -> None:
        """C-STORE for even patients, STOW-RS for odd ones: to the PACS, or to us."""
        if self.pacs is not None:
            if plan.index % 2 == 0:
                c_store("127.0.0.1", self.pacs.dicom_port, self.pacs.aet, files)
            else:
                stow(self.pacs.dicomweb_url, None, files)
        elif plan.index % 2 == 0:
            c_store("127.0.0.1", self.imaging.dicom_port, self.imaging.ae_title, files)
        else:
            token = self.token("imaging.read imaging.write")
            stow(f"http://127.0.0.1:{self.imaging.http_port}/dicomweb", token, files)

    def send_images(self, plans: list[PatientPlan]) -> None:
        folders: dict[Path, PatientPlan] = {}
        jobs = []
        for plan in plans:
            pre, post = phantom_specs(
                plan,
                pixel_spacing=1.2 if plan.modality == "CT" else None,
                slice_spacing=1.5 if plan.modality == "CT" else None,
            )
            for name, spec in (("pre", pre), ("post", post)):
                folder = self.data / "phantoms" / f"{plan.mrn}-{name}"
                folders[folder] = plan
                jobs.append((spec, folder))
        total = len(jobs)
        sent = 0
        held: dict[str, list[Path]] = {}  # post-op studies waiting for their pre-op one
        pre_sent: set[str] = set()
        _bar("rendering + sending", 0, total)
        with ProcessPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
            futures = [pool.submit(_render, spec, folder) for spec, folder in jobs]
            for future in as_completed(futures):
                folder = future.result()
                plan = folders[folder]
                files = sorted(folder.glob("*.dcm"))
                # Through the PACS, the pre-op study must be there when the post-op one
                # arrives: its arrival is what fetches the comparison.
                waiting = plan.mrn not in pre_sent and folder.name.endswith("-post")
                if self.pacs is not None and waiting:
                    held[plan.mrn] = files
                    continue
                self._send(plan, files)
                sent += 1
                if folder.name.endswith("-pre"):
                    pre_sent.add(plan.mrn)
                    if plan.mrn in held:
                        self._send(plan, held.pop(plan.mrn))
                        sent += 1
                _bar("rendering + sending", sent, total)

    def post_outcomes(self, plans: list[PatientPlan]) -> None:
        client = SyncFHIRClient(
            f"http://127.0.0.1:{self.outcomes.http_port}/fhir",
            authorization=f"Bearer {self.token('system/*.cruds')}",
        )
        surgeons = []
        for resource in surgeon_resources():
            saved = client.resource("Practitioner", **resource)
            saved.save()
            surgeons.append(f"Practitioner/{saved.id}")
        for done, plan in enumerate(plans, start=1):
            client.execute("", method="post", data=fhir_transaction(plan, surgeons))
            _bar("posting outcomes", done, len(plans))

    def wait_for_analysis(self, studies: int) -> None:
        headers = {"Authorization": f"Bearer {self.token('imaging.read')}"}
        url = f"http://127.0.0.1:{self.imaging.http_port}/api/results"
        deadline = time.monotonic() + self.args.timeout
        done = 0
        while time.monotonic() < deadline:
            items = httpx.get(url, headers=headers, params={"limit": 1000}, timeout=30).json()
            done = sum(i["analysis_state"] in ("done", "failed") for i in items["items"])
            _bar("analysing", done, studies)
            if done >= studies:
                return
            time.sleep(1.0)
        raise SystemExit(f"the analyses did not finish in {self.args.timeout} s ({done}/{studies})")

    def results_line(self) -> str:
        """Where the results went: Observations in the FHIR store, SRs in the PACS."""
        fhir = httpx.get(
            f"http://127.0.0.1:{self.outcomes.http_port}/fhir/Observation",
            params={"category": "imaging-metric", "_summary": "count"},
            headers={"Authorization": f"Bearer {self.token('system/*.rs')}"},
            timeout=60,
        ).json()
        line = f"results: {fhir.get('total', 0)} imaging Observations in the FHIR store"
        if self.pacs is not None:
            srs = self.pacs.post("/tools/find", {"Level": "Series", "Query": {"Modality": "SR"}})
            line += f", {len(srs)} SRs back in the PACS"
        return line

    def report(self) -> Path:
        gateway = f"http://127.0.0.1:{self.gateway.http_port}"
        headers = {"Authorization": f"Bearer {self.token('gateway.read', role='researcher')}"}
        with httpx.Client(base_url=gateway, headers=headers, timeout=120) as client:
            body = client.get("/api/cohort/summary", params={"refresh": "true"}).json()
            plots = []
            for title, name, params in (
                ("Foraminal height, pre vs post", "paired.png", {"quantity": "foraminal_height"}),
                ("Dural sac area, pre vs post", "paired.png", {"quantity": "dural_sac_area"}),
                ("Changes by group", "changes.png", {}),
                ("Complications", "complications.png", {}),
                ("ODI", "proms.png", {"prom": "odi"}),
                ("Leg pain NRS", "proms.png", {"prom": "leg-pain-nrs"}),
            ):
                response = client.get(f"/api/cohort/plots/{name}", params=params)
                response.raise_for_status()
                plots.append((title, response.content))
        summary = body["summary"]
        print()
        print(summary_text(summary))
        path = self.data / "report.html"
        path.write_text(
            html_report(
                summary,
                plots,
                generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                dashboard=f"{gateway}/dashboard/",
            )
        )
        return path

    def run(self) -> int:
        ports = [self.gateway.http_port, self.imaging.http_port, self.outcomes.http_port]
        busy = [p for p in [*ports, self.imaging.dicom_port] if not _port_free(p)]
        if busy:
            print(
                f"ports in use: {busy}; choose others with --base-port/--dicom-port",
                file=sys.stderr,
            )
            return 2
        if self.data.exists():
            shutil.rmtree(self.data)  # every run starts from an empty store: re-runnable
        self.data.mkdir(parents=True)
        plans = [plan_patient(i) for i in range(self.args.patients)]
        try:
            if self.pacs is not None:
                self.pacs.modalities = {
                    "spineimg": [self.imaging.ae_title, "127.0.0.1", self.imaging.dicom_port]
                }
                self.pacs.start()
                print(
                    f"PACS     {self.pacs.url} (Orthanc)  DICOM "
                    f"{self.pacs.aet}@127.0.0.1:{self.pacs.dicom_port}"
                )
            self.start(imaging_app(self.imaging), self.imaging.http_port)
            self.start(outcomes_app(self.outcomes), self.outcomes.http_port)
            print(
                f"imaging  http://127.0.0.1:{self.imaging.http_port}  DICOM "
                f"{self.imaging.ae_title}@127.0.0.1:{self.imaging.dicom_port}"
            )
            print(f"outcomes http://127.0.0.1:{self.outcomes.http_port}/fhir")
            self.post_outcomes(plans)  # the EHR first, as in the hospital
            self.send_images(plans)
            self.wait_for_analysis(2 * len(plans))
            print(self.results_line())
            self.start(gateway_app(self.gateway), self.gateway.http_port)
            report = self.report()
            dashboard = f"http://127.0.0.1:{self.gateway.http_port}/dashboard/"
            print(f"\nreport:    {report}")
            print(f"dashboard: {dashboard}")
            print(f"           user 'researcher' or 'clinician', password {self.password}")
            if self.args.no_serve or not sys.stdout.isatty():
                return 0
            print("serving; Ctrl-C stops")
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            try:
                while not stop.wait(0.5):
                    pass
            except KeyboardInterrupt:
                pass
            return 0
        finally:
            self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__)
    parser.add_argument("--patients", type=int, default=20, help="cohort size (both groups)")
    parser.add_argument("--data-dir", default="var/demo")
    parser.add_argument(
        "--base-port", type=int, default=8000, help="gateway; imaging +1, outcomes +2"
    )
    parser.add_argument("--dicom-port", type=int, default=11112)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for analyses")
    parser.add_argument("--no-serve", action="store_true", help="exit after writing the report")
    parser.add_argument(
        "--no-orthanc", action="store_true", help="send to the imaging service, not via Orthanc"
    )
    args = parser.parse_args(argv)
    if args.patients < 2:
        parser.error("--patients must be at least 2 (one per group)")
    try:
        return Demo(args).run()
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
