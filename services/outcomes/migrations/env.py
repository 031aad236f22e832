"""Alembic environment of the FHIR store (run through services.common.db.upgrade_schema)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool

from services.outcomes.models import OutcomesModel

target_metadata = OutcomesModel.metadata
config = context.config
# Each service keeps its own revision table, so several can share one database.
VERSION_TABLE = "alembic_version_outcomes"


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=True,
            version_table=VERSION_TABLE,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = engine_from_config(
        config.get_section(config.config_ini_section) or {}, poolclass=pool.NullPool
    )
    with engine.connect() as conn:
        context.configure(
            connection=conn,
            target_metadata=target_metadata,
            render_as_batch=True,
            version_table=VERSION_TABLE,
        )
        with context.begin_transaction():
            context.run_migrations()


run()
