"""Fixtures that start real servers on loopback ports and always stop them."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.dcmtk import have_dcmtk
from tests.harness.imaging import ImagingServer
from tests.harness.orthanc import OrthancServer, dicomweb_plugin, orthanc_binary
from tests.harness.outcomes import OutcomesServer
from tests.harness.postgres import PostgresServer, postgres_bin

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _require(available: bool, what: str) -> None:
    """Integration prerequisites are installed by `make test`; in CI a gap is a failure."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is not installed; `make test` installs it")
    pytest.skip(f"{what} is not installed (run `make system-deps`)")


@pytest.fixture
def dcmtk() -> None:
    _require(have_dcmtk(), "dcmtk (storescu, echoscu)")


@pytest.fixture
def imaging(tmp_path: Path) -> Iterator[ImagingServer]:
    with ImagingServer(tmp_path / "imaging") as server:
        yield server


@pytest.fixture
def imaging_factory(tmp_path: Path) -> Iterator[Callable[..., ImagingServer]]:
    started: list[ImagingServer] = []

    def factory(name: str = "imaging", **overrides: Any) -> ImagingServer:
        server = ImagingServer(tmp_path / name, **overrides).start()
        started.append(server)
        return server

    yield factory
    for server in reversed(started):
        server.stop()


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator[Callable[..., OrthancServer]]:
    _require(orthanc_binary() is not None, "Orthanc")
    _require(dicomweb_plugin() is not None, "the Orthanc DICOMweb plugin")
    started: list[OrthancServer] = []

    def factory(name: str = "orthanc", **kwargs: Any) -> OrthancServer:
        server = OrthancServer(tmp_path / name, **kwargs).start()
        started.append(server)
        return server

    yield factory
    for server in reversed(started):
        server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    _require(postgres_bin() is not None, "PostgreSQL")
    with PostgresServer() as server:
        yield server


@pytest.fixture
def outcomes(tmp_path: Path) -> Iterator[OutcomesServer]:
    with OutcomesServer(tmp_path / "outcomes") as server:
        yield server
