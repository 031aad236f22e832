"""readers' blinded assignments

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 08:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reading_assignment",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "study_instance_uid", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False
        ),
        sa.Column("reader", sqlmodel.sql.sqltypes.AutoString(length=120), nullable=False),
        sa.Column("purpose", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("blind_automatic", sa.Boolean(), nullable=False),
        sa.Column("sample", sqlmodel.sql.sqltypes.AutoString(length=120), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "study_instance_uid", "reader", "purpose", name="uq_reading_assignment"
        ),
    )
    with op.batch_alter_table("reading_assignment", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_reading_assignment_reader"), ["reader"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_reading_assignment_study_instance_uid"),
            ["study_instance_uid"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("reading_assignment", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reading_assignment_study_instance_uid"))
        batch_op.drop_index(batch_op.f("ix_reading_assignment_reader"))
    op.drop_table("reading_assignment")
