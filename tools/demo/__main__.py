"""The main job: ``python -m tools.demo`` (``make demo``) — the retrospective study.

Starts the three services on embedded defaults (SQLite, local folders, in-process analysis
workers) and Orthanc as the hospital PACS, then tells the study's story from what a
hospital has:

1. **the history**: a synthetic cohort (pre- and post-operative CT or MR phantoms with
   stenosis and post-operative changes) already in the PACS, and the department's registry
   export (KEOPS layout, Windows-1252, with a missing date and a mistyped Clavien-Dindo
   grade) on disk;
2. **the registry import** (the coordinator's upload): every valid patient loaded, every bad
   cell reported;
3. **the cohort retrieval**: the imaging service queries the PACS for each operated patient,
   chooses the pre- and post-operative studies and retrieves them (``--pacs-protocol``:
   DICOMweb, or DIMSE C-GET / C-MOVE); they are analysed as they arrive;
4. **the prospective path**, on one more patient: the EHR posts the surgery, the new
   post-operative CT arrives in the PACS, whose Lua rule routes it to the imaging service,
   which fetches the pre-operative study itself and sends its SR back;
5. the cohort summary, the study report (``report.pdf``, ``report.html``: flow, Table 1,
   endpoints, models, figures, methods) and the analysis-ready export (``analysis.zip``);
   then the dashboard until Ctrl-C (with ``--no-serve``, or without a terminal, it stops
   after the report).

Without Orthanc (``--no-orthanc``) the images go straight to the imaging service and the
outcomes through FHIR, as a prospective feed would send them.

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
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from datetime import date, timedelta
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
from tools.demo import reading
from tools.demo.cohort import PROM_DAYS, PatientPlan, phantom_specs, plan_patient, surgeon_resources
from tools.demo.cohort import transaction as fhir_transaction
from tools.demo.orthanc import OrthancServer, dicomweb_plugin, orthanc_binary
from tools.demo.registry import PAIN
from tools.demo.registry import export as registry_export
from tools.demo.report import summary_text
from tools.demo.send import SendError, c_store, stow
from tools.phantom import PhantomSpec, cached_phantom

SENDERS = 4  # concurrent C-STORE associations / STOW-RS requests into the PACS


def _render(spec: PhantomSpec, cache: Path) -> Path:
    """The phantom's folder, rendered once per spec and renderer (``--phantom-cache``)."""
    return cached_phantom(spec, cache)


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
        self.cache = Path(args.phantom_cache)
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
        for reader in (reading.PRIMARY, reading.SECOND):  # the review workstation's users
            users[reader] = BasicUser(
                password_hash=hash_password(self.password, rounds=50_000),
                scope="gateway.read",
                role="reader",
            )
        self.auth = AuthSettings(secret_key=key, basic_users=users)
        self.authenticator = Authenticator(self.auth)
        base = args.base_port
        self.pacs: OrthancServer | None = None
        pacs_options: dict[str, Any] = {}
        if not args.no_orthanc and orthanc_binary() and dicomweb_plugin():
            # Only what is acquired from now on is routed: the archive is pulled.
            since = (date.today() - timedelta(days=30)).strftime("%Y%m%d")
            self.pacs = OrthancServer(
                self.data / "orthanc",
                autoroute=True,
                stable_age=2,
                extra={"SpineRouteSince": since},
            )
            pacs_options = {
                "pacs_dicomweb_url": self.pacs.dicomweb_url,
                "prior_fetch_enabled": True,
                "results_destination": "stow",
                "pacs_protocol": "dimse" if args.pacs_protocol != "dicomweb" else "dicomweb",
                "pacs_dicom_host": "127.0.0.1",
                "pacs_dicom_port": self.pacs.dicom_port,
                "pacs_called_aet": self.pacs.aet,
                "pacs_retrieve": "move" if args.pacs_protocol == "c-move" else "get",
                "cohort_min_instances": 10,
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
        """C-STORE for even patients, STOW-RS for odd ones: into the PACS's archive, or
        (without a PACS) straight to us."""
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

    def send_images(self, plans: list[PatientPlan], label: str) -> None:
        """Render every plan's pre- and post-operative studies, each sent once ready. With a
        PACS this is its archive (older than its routing rule's start: nothing is routed)."""
        jobs: list[tuple[PatientPlan, PhantomSpec]] = []
        for plan in plans:
            pre, post = phantom_specs(
                plan,
                pixel_spacing=1.2 if plan.modality == "CT" else None,
                slice_spacing=1.5 if plan.modality == "CT" else None,
                mr_protocols=True,
            )
            jobs += [(plan, pre), (plan, post)]
        _bar(label, 0, len(jobs))
        # Rendering in processes (one per core); each study sent once ready, by SENDERS
        # concurrent associations / requests: a PACS ingests several senders at once far
        # faster than one (Orthanc 1.10: 18 instances/s from one storescu, 67 from four).
        with (
            ProcessPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool,
            ThreadPoolExecutor(max_workers=SENDERS) as senders,
        ):
            futures = {pool.submit(_render, spec, self.cache): plan for plan, spec in jobs}
            progress = {"sent": 0}
            lock = threading.Lock()

            def send(plan: PatientPlan, files: list[Path]) -> None:
                self._send(plan, files)
                with lock:
                    progress["sent"] += 1
                    _bar(label, progress["sent"], len(jobs))

            sent = []
            for future in as_completed(futures):
                files = sorted(future.result().glob("*.dcm"))
                sent.append(senders.submit(send, futures[future], files))
            for sending in sent:
                sending.result()

    # -- the retrospective study ------------------------------------------------------
    def import_registry(self, plans: list[PatientPlan]) -> None:
        """The coordinator uploads the registry export; the report lists every bad cell."""
        data, broken = registry_export(plans, defects=True)
        path = self.data / "registry" / "keops-export.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        print(f"registry export: {path} ({len(plans)} rows)")
        for defect in broken:
            print(f"  (a real export's defect, on purpose: {defect})")
        response = httpx.post(
            f"http://127.0.0.1:{self.outcomes.http_port}/registry/import",
            params={"filename": path.name},
            content=data,
            headers={
                "Authorization": f"Bearer {self.token('registry.import')}",
                "Content-Type": "text/csv",
            },
            timeout=600,
        )
        response.raise_for_status()
        report = response.json()
        s = report["summary"]
        print(
            f"registry import: {s['rows']} rows, {s['patients_loaded']} patients loaded, "
            f"{s['patients_rejected']} rejected; {s['resources_created']} FHIR resources written"
        )
        for error in report["errors"]:
            print(
                f"  row {error['row']}, column '{error['column']}', value "
                f"'{error['value']}': {error['reason']}"
            )

    def retrieve_cohort(self) -> int:
        """The imaging service pulls each operated patient's studies from the PACS; returns
        how many studies it brought in."""
        base = f"http://127.0.0.1:{self.imaging.http_port}/api/cohort"
        headers = {"Authorization": f"Bearer {self.token('imaging.read imaging.write')}"}
        started = httpx.post(f"{base}/retrieve", json={}, headers=headers, timeout=120)
        started.raise_for_status()
        total = started.json()["patients"]
        deadline = time.monotonic() + self.args.timeout
        settled: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            listed = httpx.get(base, headers=headers, timeout=60).json()
            settled = [p for p in listed if p["status"] not in ("found", "retrieving")]
            _bar("retrieving from PACS", len(settled), total)
            if len(settled) >= total:
                break
            time.sleep(1.0)
        studies = 0
        print(f"cohort retrieval ({self.args.pacs_protocol}):")
        for patient in settled:
            slots = [patient[s]["state"] for s in ("pre", "post")]
            studies += sum(state in ("retrieved", "analysed") for state in slots)
            print(
                f"  {patient['patient_id']}  surgery {patient['surgery_date']}  {patient['status']}"
            )
        return studies

    def prospective(self, plan: PatientPlan) -> None:
        """A new patient: the EHR posts the surgery, the post-op CT arrives in the PACS
        today and is routed to us; the pre-op study is fetched as its prior."""
        assert self.pacs is not None
        self.post_outcomes([plan])
        pre, post = phantom_specs(plan, pixel_spacing=1.2, slice_spacing=1.5)
        pre_folder = _render(pre, self.cache)
        for path in sorted(pre_folder.glob("*.dcm")):
            self.pacs.upload(path.read_bytes())  # archived, not routed (not post-op)
        post_folder = _render(post, self.cache)
        c_store("127.0.0.1", self.pacs.dicom_port, self.pacs.aet, sorted(post_folder.glob("*.dcm")))
        print(f"prospective: {plan.mrn}'s post-operative CT stored in the PACS, routed by its rule")

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

    def _result_counts(self) -> tuple[int, int | None]:
        """Imaging Observations in the FHIR store; SRs in the PACS (None without one)."""
        fhir = httpx.get(
            f"http://127.0.0.1:{self.outcomes.http_port}/fhir/Observation",
            params={"category": "imaging-metric", "_summary": "count"},
            headers={"Authorization": f"Bearer {self.token('system/*.rs')}"},
            timeout=60,
        ).json()
        srs = None
        if self.pacs is not None:
            found = self.pacs.post("/tools/find", {"Level": "Series", "Query": {"Modality": "SR"}})
            srs = len(found)
        return int(fhir.get("total", 0)), srs

    def results_line(self, studies: int) -> str:
        """Where the results went: Observations in the FHIR store, SRs in the PACS — once
        delivered (the deliveries follow each analysis: an SR per study, the counts steady)."""
        deadline = time.monotonic() + self.args.timeout
        last, steady = None, 0
        while time.monotonic() < deadline:
            counts = self._result_counts()
            steady = steady + 1 if counts == last else 0
            last = counts
            # (a study whose analysis failed has no SR: five steady seconds end the wait)
            if steady >= 5 or (steady >= 2 and counts[1] is not None and counts[1] >= studies):
                break
            time.sleep(1.0)
        observations, srs = last if last is not None else (0, None)
        line = f"results: {observations} imaging Observations in the FHIR store"
        if srs is not None:
            line += f", {srs} SRs back in the PACS"
        return line

    def simulated_reads(self) -> str:
        """Two simulated readers through the workstation's API, then the agreement."""
        gateway = f"http://127.0.0.1:{self.gateway.http_port}"
        imaging = f"http://127.0.0.1:{self.imaging.http_port}"

        def token(subject: str, scope: str, role: str) -> str:
            return self.authenticator.issue_token(subject, scope, role=role)

        clinician = {"Authorization": f"Bearer {token('demo', 'gateway.read', 'clinician')}"}
        with (
            httpx.Client(base_url=gateway, timeout=600) as client,
            httpx.Client(
                base_url=imaging,
                headers={"Authorization": f"Bearer {self.token('imaging.read')}"},
                timeout=120,
            ) as pixels,
        ):
            line = reading.simulate(client, pixels, token)
            table = client.get(
                "/api/agreement", params={"refresh": "true"}, headers=clinician
            ).json()
        rows = [line, "agreement (simulated readers: the noise is the simulation's):"]
        for r in table["agreement"]:
            if r["kind"] == "intra-reader" or r["icc2"] is None:
                continue
            rows.append(
                f"  {r['quantity']:<18} {r['rater_a']} vs {r['rater_b']}: n={r['n']}, "
                f"ICC(2,1) {r['icc2']:.3f}, bias {r['bias']:+.2f}, limits of agreement "
                f"{r['loa'][0]:+.2f} to {r['loa'][1]:+.2f}"
            )
        return "\n".join(rows)

    def report(self) -> list[Path]:
        """The cohort summary on the terminal; the study report (PDF and HTML) and the
        analysis-ready export, as a researcher gets them from the gateway."""
        gateway = f"http://127.0.0.1:{self.gateway.http_port}"
        headers = {"Authorization": f"Bearer {self.token('gateway.read', role='researcher')}"}
        written = []
        with httpx.Client(base_url=gateway, headers=headers, timeout=600) as client:
            body = client.get("/api/cohort/summary", params={"refresh": "true"}).json()
            print()
            print(summary_text(body["summary"]))
            for route, name in (
                ("/api/report.pdf", "report.pdf"),
                ("/api/report.html", "report.html"),
                ("/api/export/analysis.zip", "analysis.zip"),
            ):
                response = client.get(route)
                response.raise_for_status()
                path = self.data / name
                path.write_bytes(response.content)
                written.append(path)
        return written

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
            if self.pacs is None:
                self.post_outcomes(plans)  # the EHR first, as in the hospital
                self.send_images(plans, "rendering + sending")
                studies = 2 * len(plans)
            else:
                history, new = plans[:-1], _prospective_plan(len(plans) - 1)
                self.send_images(history, "PACS archive")
                self.import_registry(history)
                retrieved = self.retrieve_cohort()
                self.prospective(new)
                studies = retrieved + 2
            self.wait_for_analysis(studies)
            print(self.results_line(studies))
            self.start(gateway_app(self.gateway), self.gateway.http_port)
            if self.args.simulated_reads:
                print(self.simulated_reads())
            written = self.report()
            dashboard = f"http://127.0.0.1:{self.gateway.http_port}/dashboard/"
            print(
                f"\nreport:    {written[0]} (and {written[1].name}; the analysis tables: "
                f"{written[2].name})"
            )
            print(f"dashboard: {dashboard}")
            print(
                f"           user 'researcher', 'clinician', or the readers 'reader-1' and "
                f"'reader-2' (the review workstation), password {self.password}"
            )
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


def _prospective_plan(index: int) -> PatientPlan:
    """A foraminal patient operated three days ago (the index makes its group CT)."""
    index += index % 2  # even indices are foraminal-stenosis (CT): the route is shown on CT
    base = date.today() - timedelta(days=3 + 7 * index // 2)
    plan = plan_patient(index, start=base)
    plan.surgery_date = date.today() - timedelta(days=3)
    # Only what three days allow: the baseline and first days' scores, early complications.
    plan.proms = {  # pain on the registry's scale (VAS), as the retrospective patients
        PAIN.get(code, code): {tp: v for tp, v in by_time.items() if PROM_DAYS[tp] <= 3}
        for code, by_time in plan.proms.items()
    }
    plan.complications = [c for c in plan.complications if c[2] <= 3]
    return plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__)
    parser.add_argument("--patients", type=int, default=20, help="cohort size (both groups)")
    parser.add_argument("--data-dir", default="var/demo")
    parser.add_argument(
        "--base-port", type=int, default=8000, help="gateway; imaging +1, outcomes +2"
    )
    parser.add_argument("--dicom-port", type=int, default=11112)
    parser.add_argument(
        "--phantom-cache",
        default="var/cache/phantoms",
        help="rendered phantoms, kept between runs (keyed by their spec and the renderer)",
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for analyses")
    parser.add_argument("--no-serve", action="store_true", help="exit after writing the report")
    parser.add_argument(
        "--no-orthanc", action="store_true", help="send to the imaging service, not via Orthanc"
    )
    parser.add_argument(
        "--simulated-reads",
        action="store_true",
        help="two simulated readers review the cohort (a primary read and a blinded 30 %% "
        "sample), so the agreement tables have data",
    )
    parser.add_argument(
        "--pacs-protocol",
        choices=("dicomweb", "c-get", "c-move"),
        default="dicomweb",
        help="how the imaging service pulls the cohort from the PACS",
    )
    args = parser.parse_args(argv)
    if args.patients < 2:
        parser.error("--patients must be at least 2 (one per group)")
    try:
        return Demo(args).run()
    except KeyboardInterrupt:
        return 130
    except (SendError, httpx.HTTPError) as exc:
        print(f"demo stopped: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
