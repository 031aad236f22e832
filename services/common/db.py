"""Database plumbing shared by the services: one engine factory, one session helper,
one way to bring a schema up to date (Alembic).

SQLite is the embedded default; any SQLAlchemy URL (``postgresql+psycopg://...``) works.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, create_engine


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    """Create the engine for ``url`` with the settings each backend needs.

    SQLite runs in WAL mode so that readers never block the writer, with
    ``synchronous=FULL``: a commit is on disk when it returns, so what was acknowledged
    (a C-STORE, a FHIR write) survives a power cut as well as a crash. (``NORMAL`` keeps
    commits through a process crash only; the imaging store's start-up sweep would then
    delete an acknowledged instance whose index row the power cut lost.)
    """
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=pool_size,
            max_overflow=pool_size,
            hide_parameters=True,  # statement errors must not carry patient data into logs
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(
        url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, hide_parameters=True
    )


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on any exception."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def upgrade_schema(engine: Engine, migrations_dir: Path) -> None:
    """Bring the database behind ``engine`` to the newest Alembic revision."""
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")


def sqlite_url_for(path: Path) -> str:
    """The SQLAlchemy URL of a SQLite file, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"
