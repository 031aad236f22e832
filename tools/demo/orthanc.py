"""A real Orthanc (Debian package, DICOMweb plugin) on loopback ports, as the PACS of the
demo and the tests.

The configuration is generated from ``deploy/orthanc/orthanc.json`` with test ports
and folders, and uses the same auto-routing Lua script as the deployment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from services.common.net import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "orthanc"
PLUGIN_DIRS = [Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc/plugins")]


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc") or shutil.which("orthanc")


def dicomweb_plugin() -> Path | None:
    for folder in PLUGIN_DIRS:
        candidate = folder / "libOrthancDicomWeb.so"
        if candidate.exists():
            return candidate
    return None


class OrthancServer:
    """Start, use and stop one Orthanc."""

    def __init__(
        self,
        workdir: Path,
        *,
        aet: str = "ORTHANC",
        modalities: dict[str, list[Any]] | None = None,
        dicomweb_servers: dict[str, Any] | None = None,
        autoroute: bool = False,
        stable_age: int = 1,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.workdir = workdir
        self.aet = aet
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.modalities = modalities or {}
        self.dicomweb_servers = dicomweb_servers or {}
        self.autoroute = autoroute
        self.stable_age = stable_age
        self.extra = extra or {}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def config(self) -> dict[str, Any]:
        base: dict[str, Any] = json.loads((DEPLOY / "orthanc.json").read_text())
        plugin = dicomweb_plugin()
        storage = self.workdir / "storage"
        base.update(
            {
                "Name": "test-pacs",
                "StorageDirectory": str(storage),
                "IndexDirectory": str(storage),
                "HttpPort": self.http_port,
                "DicomPort": self.dicom_port,
                "DicomAet": self.aet,
                "RemoteAccessAllowed": False,
                "AuthenticationEnabled": False,
                "StableAge": self.stable_age,
                "LuaScripts": [str(DEPLOY / "autoroute.lua")] if self.autoroute else [],
                "DicomModalities": self.modalities,
                "Plugins": [str(plugin)] if plugin else [],
                "DicomCheckCalledAet": False,
                "HttpTimeout": 30,
            }
        )
        base["DicomWeb"] = {
            "Enable": True,
            "Root": "/dicom-web/",
            "Servers": self.dicomweb_servers,
        }
        base.update(self.extra)
        return base

    def start(self) -> OrthancServer:
        binary = orthanc_binary()
        if binary is None:
            raise RuntimeError("Orthanc is not installed (make system-deps)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "orthanc.json"
        config.write_text(json.dumps(self.config(), indent=2))
        log = (self.workdir / "orthanc.log").open("wb")
        self.process = subprocess.Popen(
            [binary, "--logdir=" + str(self.workdir), str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            # Nagle off in its DCMTK, as docker-compose.yml runs it (DCMTK FAQ #48).
            env={"TCP_NODELAY": "1", **os.environ},
        )
        if not wait_until(self._alive, timeout=30):
            self.stop()
            raise RuntimeError(f"Orthanc did not start; see {self.workdir}")
        return self

    def _alive(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {self.process.returncode}; see {self.workdir}")
        try:
            return httpx.get(f"{self.url}/system", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    # -- REST helpers ---------------------------------------------------------------------
    def get(self, path: str) -> Any:
        response = httpx.get(self.url + path, timeout=60)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, payload: Any, timeout: float = 120) -> Any:
        response = httpx.post(self.url + path, json=payload, timeout=timeout)
        response.raise_for_status()
        return response.json()

    def upload(self, data: bytes) -> dict[str, Any]:
        response = httpx.post(self.url + "/instances", content=data, timeout=60)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def study_id(self, study_instance_uid: str) -> str:
        """Orthanc's identifier of a study, by its Study Instance UID."""
        response = httpx.post(self.url + "/tools/lookup", content=study_instance_uid, timeout=30)
        response.raise_for_status()
        return str(next(r["ID"] for r in response.json() if r["Type"] == "Study"))

    def statistics(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get("/statistics")
        return result

    def wait_for_instances(self, count: int, timeout: float = 60) -> bool:
        return wait_until(lambda: self.statistics()["CountInstances"] >= count, timeout, 0.2)

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        time.sleep(0)
