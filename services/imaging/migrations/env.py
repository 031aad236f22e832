"""Alembic environment of the imaging index (run through services.common.db.upgrade_schema)."""

from services.common.migrations import run_migrations
from services.imaging.models import ImagingModel

run_migrations(ImagingModel.metadata, version_table="alembic_version_imaging")
