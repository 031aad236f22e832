"""The index schema: Alembic migrations on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from services.common.db import make_engine, upgrade_schema
from services.imaging.completion.lifecycle import StudyLifecycle
from services.imaging.intake.store import InstanceStore
from services.imaging.models import ImagingModel
from services.imaging.runtime import MIGRATIONS
from tests.harness.postgres import PostgresServer
from tests.harness.series import SeriesSpec, make_series, to_bytes

TABLES = {
    "study",
    "series",
    "instance",
    "instance_version",
    "study_event",
    "alembic_version_imaging",
}


def test_migrations_create_the_schema_the_models_describe(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'index.db'}")
    upgrade_schema(engine, MIGRATIONS)
    upgrade_schema(engine, MIGRATIONS)  # idempotent
    assert set(inspect(engine).get_table_names()) >= TABLES
    with engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"version_table": "alembic_version_imaging"}),
            ImagingModel.metadata,
        )
    assert diff == [], f"models and migrations disagree: {diff}"


@pytest.mark.integration
def test_store_and_life_cycle_on_postgresql(postgres: PostgresServer, tmp_path: Path) -> None:
    engine = make_engine(postgres.url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    upgrade_schema(engine, MIGRATIONS)
    with engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"version_table": "alembic_version_imaging"}),
            ImagingModel.metadata,
        )
    assert diff == []
    store = InstanceStore(engine, tmp_path / "storage", max_instance_bytes=10_000_000)
    datasets = make_series(SeriesSpec(slices=6))
    results = [store.put(to_bytes(ds), source="test") for ds in datasets]
    assert [r.outcome for r in results] == ["stored"] * 6
    assert store.put(to_bytes(datasets[0]), source="test").outcome == "duplicate"
    datasets[1].SeriesDescription = "changed"
    assert store.put(to_bytes(datasets[1]), source="test").outcome == "conflict"
    lifecycle = StudyLifecycle(engine, quiet_seconds=0.1, gap_tolerance=0.5)
    time.sleep(0.2)
    assert lifecycle.sweep() == [datasets[0].StudyInstanceUID]
    received = []
    lifecycle.subscribe(received.append)
    assert lifecycle.deliver() == 1 and received[0].study_version == 1
    engine.dispose()
