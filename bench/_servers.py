"""The services as their own processes on loopback, for the benchmarks."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import httpx

from services.common.auth import Authenticator, AuthSettings
from tests.harness.net import free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-signing-key-" + "y" * 32


def token(scope: str, *, role: str | None = None) -> str:
    return Authenticator(AuthSettings(secret_key=KEY)).issue_token("bench", scope, role=role)


def start_service(
    service: str, workdir: Path, env: Mapping[str, str], *, http_port: int | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m services.<service> serve`` with ``env`` (the service's own settings);
    returns the process and its base URL once ``/healthz`` answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = http_port or free_port()
    prefix = service.upper()
    full = dict(
        os.environ,
        AUTH_SECRET_KEY=KEY,
        **{
            f"{prefix}_HTTP_PORT": str(port),
            f"{prefix}_DATA_DIR": str(workdir),
            f"{prefix}_LOG_LEVEL": "WARNING",
        },
        **env,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", f"services.{service}", "serve"],
        cwd=ROOT,
        env=full,
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "server.log").open("wb"),
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    if not wait_until(ready, 90, 0.2):
        proc.kill()
        raise RuntimeError(f"{service} service did not start (see {workdir / 'server.log'})")
    return proc, url


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def dcmtk_nodelay(keep_nagle: bool) -> str:
    """Disable Nagle's algorithm in every dcmtk program started from here (storescu,
    storescp, Orthanc): since DCMTK 3.6.2 it is left on unless ``TCP_NODELAY=1`` (DCMTK
    FAQ #48), which caps a dcmtk-to-dcmtk C-STORE on loopback near 20 instances/s by the
    delayed-ACK wait. A peer crippled that way is no peer; ``keep_nagle`` shows it."""
    if keep_nagle:
        os.environ["TCP_NODELAY"] = "0"
        return "dcmtk with Nagle's algorithm on (its default since 3.6.2)"
    os.environ["TCP_NODELAY"] = "1"
    return "dcmtk with TCP_NODELAY=1 (Nagle off), as a tuned site runs it"
