"""reader review: what a reader did with an automatic value, and the construction they left

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 07:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("manual_measurement", schema=None) as batch_op:
        batch_op.alter_column("value", existing_type=sa.Float(), nullable=True)
        batch_op.add_column(
            sa.Column(
                "action",
                sqlmodel.sql.sqltypes.AutoString(length=16),
                nullable=False,
                server_default="measured",
            )
        )
        batch_op.add_column(
            sa.Column(
                "purpose",
                sqlmodel.sql.sqltypes.AutoString(length=16),
                nullable=False,
                server_default="review",
            )
        )
        batch_op.add_column(
            sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True)
        )
        batch_op.add_column(sa.Column("automatic_value", sa.Float(), nullable=True))
        batch_op.add_column(
            sa.Column("key_image", sqlmodel.sql.sqltypes.AutoString(length=120), nullable=True)
        )
        batch_op.add_column(sa.Column("geometry", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("measurement_set_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("manual_measurement", schema=None) as batch_op:
        for column in (
            "measurement_set_id",
            "geometry",
            "key_image",
            "automatic_value",
            "reason",
            "purpose",
            "action",
        ):
            batch_op.drop_column(column)
        batch_op.alter_column("value", existing_type=sa.Float(), nullable=False)
