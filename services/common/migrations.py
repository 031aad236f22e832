"""The body of every service's Alembic ``env.py``: run the migrations of one metadata,
on the connection ``services.common.db.upgrade_schema`` passes (or from the URL)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import MetaData, engine_from_config, pool
from sqlalchemy.engine import Connection


def run_migrations(metadata: MetaData, version_table: str) -> None:
    """Run inside Alembic's env.py; each service keeps its own revision table so that
    several can share one database."""
    config = context.config

    def migrate(connection: Connection) -> None:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=True,
            version_table=version_table,
        )
        with context.begin_transaction():
            context.run_migrations()

    connection = config.attributes.get("connection")
    if connection is not None:
        migrate(connection)
        return
    engine = engine_from_config(
        config.get_section(config.config_ini_section) or {}, poolclass=pool.NullPool
    )
    with engine.connect() as conn:
        migrate(conn)
