"""A real PostgreSQL (Debian package) in a temporary cluster on a loopback port."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.harness.net import free_port


def postgres_bin() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


class PostgresServer:
    """initdb, start, create a database; stop and remove on exit. Runs as 'postgres' if root."""

    def __init__(self) -> None:
        # Its own folder under /tmp: pytest's folders are private to root, and PostgreSQL
        # runs as the 'postgres' user.
        self.workdir = Path(tempfile.mkdtemp(prefix="spine-pg-"))
        self.port = free_port()
        self.bindir = postgres_bin()
        self.datadir = self.workdir / "pgdata"
        self._as: list[str] = []

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/spine"

    def fresh_database(self, name: str) -> str:
        """Create (or re-create) a database and return its URL."""
        assert self.bindir is not None
        for tool in ("dropdb", "createdb"):
            subprocess.run(
                [
                    *self._as,
                    str(self.bindir / tool),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-U",
                    "postgres",
                    *(["--if-exists"] if tool == "dropdb" else []),
                    name,
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> PostgresServer:
        if self.bindir is None:
            raise RuntimeError("PostgreSQL is not installed (make system-deps)")
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root.
            shutil.chown(self.workdir, "postgres", "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.datadir),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        )
        options = f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.datadir),
            "-o",
            options,
            "-l",
            str(self.workdir / "postgres.log"),
            "-w",
            "start",
        )
        self._run(
            str(self.bindir / "createdb"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "spine",
        )
        return self

    def stop(self) -> None:
        if self.bindir is not None and self.datadir.exists():
            subprocess.run(
                [
                    *self._as,
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.datadir),
                    "-m",
                    "fast",
                    "-w",
                    "stop",
                ],
                capture_output=True,
                timeout=60,
                check=False,
            )
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
