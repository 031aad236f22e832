"""Alembic environment of the gateway's audit trail (run through upgrade_schema)."""

from services.common.migrations import run_migrations
from services.gateway.models import GatewayModel

run_migrations(GatewayModel.metadata, version_table="alembic_version_gateway")
