"""Alembic environment of the FHIR store (run through services.common.db.upgrade_schema)."""

from services.common.migrations import run_migrations
from services.outcomes.models import OutcomesModel

run_migrations(OutcomesModel.metadata, version_table="alembic_version_outcomes")
