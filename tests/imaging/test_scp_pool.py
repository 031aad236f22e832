"""Several SCP processes behind one DICOM port: connections handed to the least busy
process, one association limit for the service, the helpers' receipts counted by the
service, helpers that do not outlive it — with real peers (dcmtk, pynetdicom)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from tests.harness.dcmtk import echoscu, storescu
from tests.harness.imaging import ImagingServer
from tests.harness.net import free_port, wait_until
from tests.harness.series import SeriesSpec, make_series, write_series

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("dcmtk")]
ROOT = Path(__file__).resolve().parents[2]


def _helpers() -> list[psutil.Process]:
    return [
        child for child in psutil.Process().children() if "scp-helper" in " ".join(child.cmdline())
    ]


def _holds_port(process: psutil.Process, port: int) -> bool:
    return any(
        c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED
        for c in process.net_connections(kind="tcp")
    )


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit may wait for its reaper)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _received(imaging: ImagingServer, outcome: str) -> float:
    text = httpx.get(f"{imaging.url}/metrics").text
    found = re.search(
        rf'imaging_instances_received_total\{{outcome="{outcome}",protocol="dimse"\}} (\S+)'
        rf'|imaging_instances_received_total\{{protocol="dimse",outcome="{outcome}"\}} (\S+)',
        text,
    )
    return float(next(g for g in found.groups() if g)) if found else 0.0


def test_connections_go_to_the_least_busy_process_and_all_are_stored(
    imaging_factory: Callable[..., ImagingServer], tmp_path: Path
) -> None:
    before = {p.pid for p in _helpers()}
    imaging = imaging_factory(dicom_processes=2)
    helper = next(p for p in _helpers() if p.pid not in before)
    assert httpx.get(f"{imaging.url}/readyz").json()["checks"]["dicom"] == "ok"
    stored_before = _received(imaging, "stored")

    # Two associations held at once: the first goes to the idle helper, the second to
    # the service's own process; each stores an instance.
    series = make_series(SeriesSpec(slices=2, rows=32, columns=32, seed=71))
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context(CTImageStorage)
    first = ae.associate("127.0.0.1", imaging.dicom_port, ae_title=imaging.ae_title)
    assert first.is_established
    assert wait_until(lambda: _holds_port(helper, imaging.dicom_port), 5)
    second = ae.associate("127.0.0.1", imaging.dicom_port, ae_title=imaging.ae_title)
    assert second.is_established
    try:
        assert first.send_c_store(series[0]).Status == 0x0000
        assert second.send_c_store(series[1]).Status == 0x0000
    finally:
        first.release()
        second.release()

    # Four parallel senders (dcmtk), one series split between them: nothing lost.
    spec = SeriesSpec(slices=24, rows=64, columns=64, seed=72)
    files = write_series(make_series(spec), tmp_path / "series")
    results: list[subprocess.CompletedProcess[str]] = []
    threads = [
        threading.Thread(
            target=lambda group=files[i::4]: results.append(
                storescu(imaging.dicom_port, imaging.ae_title, group)
            )
        )
        for i in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.returncode for r in results] == [0, 0, 0, 0], [r.stderr for r in results]
    study = str(make_series(spec)[0].StudyInstanceUID)
    with imaging.client() as client:
        stored = client.get(f"/dicomweb/studies/{study}/instances").json()
    assert len(stored) == 24
    # The helper's receipts reach the service's counter (relayed every 0.2 s).
    assert wait_until(lambda: _received(imaging, "stored") - stored_before == 26, 5)


@pytest.mark.parametrize("processes", [1, 2])
def test_the_association_limit_is_the_services(
    imaging_factory: Callable[..., ImagingServer], processes: int
) -> None:
    server = imaging_factory(max_associations=2, dicom_processes=processes)
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context(CTImageStorage)
    held = [ae.associate("127.0.0.1", server.dicom_port, ae_title=server.ae_title) for _ in "ab"]
    try:
        assert all(a.is_established for a in held)
        refused = echoscu(server.dicom_port, server.ae_title)
        assert refused.returncode != 0
    finally:
        for assoc in held:
            assoc.release()
    assert wait_until(lambda: echoscu(server.dicom_port, server.ae_title).returncode == 0, 10)


def test_same_instance_from_two_processes_at_once_is_stored_once(
    imaging_factory: Callable[..., ImagingServer],
) -> None:
    """One SOP Instance UID with two contents, sent on two associations that two
    processes serve, many times over: one current version, one conflict, never a lost
    file or a refused instance (the store's locks are shared by the processes)."""
    imaging = imaging_factory(dicom_processes=2)
    ae = AE(ae_title="RACER")
    ae.add_requested_context(CTImageStorage)
    pairs = []
    for seed in range(8):
        first, second = (
            make_series(SeriesSpec(slices=1, rows=32, columns=32, seed=200 + seed))[0] for _ in "ab"
        )
        second.SOPInstanceUID = first.SOPInstanceUID = generate_uid()
        second.StudyInstanceUID, second.SeriesInstanceUID = (
            first.StudyInstanceUID,
            first.SeriesInstanceUID,
        )
        second.PixelData = bytes(len(first.PixelData))  # other content, same UIDs
        pairs.append((first, second))
    assocs = [
        ae.associate("127.0.0.1", imaging.dicom_port, ae_title=imaging.ae_title) for _ in "ab"
    ]
    statuses: list[int] = []
    try:
        for first, second in pairs:
            threads = [
                threading.Thread(
                    target=lambda a=a, ds=ds: statuses.append(a.send_c_store(ds).Status)
                )
                for a, ds in zip(assocs, (first, second), strict=True)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    finally:
        for assoc in assocs:
            assoc.release()
    assert statuses == [0x0000] * 16
    with imaging.client() as client:
        for first, _ in pairs:
            found = client.get(
                f"/dicomweb/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}"
                f"/instances/{first.SOPInstanceUID}"
            )
            assert found.status_code == 200, found.text
    storage = imaging.settings.storage_dir
    for first, _ in pairs:
        files = sorted(storage.rglob(f"{first.SOPInstanceUID}*.dcm"))
        assert [f.name.removeprefix(first.SOPInstanceUID) for f in files] == [".dcm", ".v2.dcm"]


def test_helpers_share_the_services_files_and_end_with_it_even_killed(tmp_path: Path) -> None:
    """The service run from its own working folder with a relative data folder (the
    default is one): the helper writes the same files and database; killed with -9,
    the service takes its helpers with it and frees the port."""
    port, http_port = free_port(), free_port()
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        IMAGING_DATA_DIR="imaging",
        IMAGING_DICOM_HOST="127.0.0.1",
        IMAGING_DICOM_PORT=str(port),
        IMAGING_HTTP_PORT=str(http_port),
        IMAGING_DICOM_PROCESSES="3",
        AUTH_SECRET_KEY="scp-pool-test-key-" + "x" * 32,
    )
    service = subprocess.Popen(
        [sys.executable, "-m", "services.imaging", "serve"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # HTTP answers once start-up is over, i.e. once the helpers listen too.
        assert wait_until(lambda: _answers(f"http://127.0.0.1:{http_port}/healthz"), 60, 0.3)

        def helpers() -> list[psutil.Process]:
            return [
                c
                for c in psutil.Process(service.pid).children()
                if "scp-helper" in " ".join(c.cmdline())
            ]

        assert wait_until(lambda: len(helpers()) == 2, 30)
        pids = [p.pid for p in helpers()]
        assert wait_until(lambda: all(p.cwd() == str(tmp_path) for p in helpers()), 5)
        # Three associations at once: each process holds one, each stores an instance.
        series = make_series(SeriesSpec(slices=3, rows=32, columns=32, seed=73))
        ae = AE(ae_title="HOLDER")
        ae.add_requested_context(CTImageStorage)
        held = [ae.associate("127.0.0.1", port, ae_title="SPINEIMG") for _ in series]
        try:
            assert all(a.is_established for a in held)
            assert wait_until(lambda: all(_holds_port(p, port) for p in helpers()), 5)
            statuses = [a.send_c_store(ds).Status for a, ds in zip(held, series, strict=True)]
            assert statuses == [0, 0, 0]
        finally:
            for assoc in held:
                assoc.release()
        stored = sorted((tmp_path / "imaging").rglob("*.dcm"))
        assert {f.stem for f in stored} == {str(ds.SOPInstanceUID) for ds in series}
        # Received, not analysed yet (the study waits out its quiet time): no process of
        # the service has loaded the analysis libraries (SimpleITK, SciPy: ~200 MB).
        import SimpleITK  # noqa: F401 - this test's own process: the check sees them

        def analysis_libraries(process: psutil.Process) -> list[str]:
            return [
                m.path
                for m in process.memory_maps()
                if "SimpleITK" in m.path or "/scipy/" in m.path
            ]

        assert analysis_libraries(psutil.Process())
        for process in (psutil.Process(service.pid), *helpers()):
            assert analysis_libraries(process) == [], process.cmdline()
        service.send_signal(signal.SIGKILL)
        service.wait()
        assert wait_until(lambda: not any(_running(pid) for pid in pids), 10)
        with socket.socket() as probe:  # the port is free again
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))
    finally:
        service.kill()
        service.wait()


def test_a_frozen_helper_is_handed_nothing(
    imaging_factory: Callable[..., ImagingServer],
) -> None:
    """A helper that stops answering (here SIGSTOP) stops publishing its heartbeat: within
    a second it is handed no connection and its associations no longer count."""
    before = {p.pid for p in _helpers()}
    imaging = imaging_factory(dicom_processes=2, max_associations=3)
    helper = next(p for p in _helpers() if p.pid not in before)
    helper.suspend()
    try:
        ae = AE(ae_title="PROBE")
        ae.acse_timeout = 5
        ae.add_requested_context(CTImageStorage)
        time.sleep(1.5)
        held = [
            ae.associate("127.0.0.1", imaging.dicom_port, ae_title=imaging.ae_title) for _ in "abc"
        ]
        try:
            assert all(a.is_established for a in held)
            assert not _holds_port(helper, imaging.dicom_port)
        finally:
            for assoc in held:
                if assoc.is_established:
                    assoc.release()
    finally:
        helper.resume()
