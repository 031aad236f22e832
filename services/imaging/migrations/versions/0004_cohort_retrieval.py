"""cohort retrieval

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 03:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cohort_patient",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("surgery_date", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
        sa.Column("modality", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("group", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
        sa.Column("pre_state", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("post_state", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("pre_study_uid", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("post_study_uid", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("candidates", sa.Text(), nullable=True),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=True),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("patient_id", "surgery_date", name="uq_cohort_patient"),
    )
    op.create_index(
        op.f("ix_cohort_patient_patient_id"), "cohort_patient", ["patient_id"], unique=False
    )
    op.create_table(
        "cohort_study",
        sa.Column(
            "study_instance_uid", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False
        ),
        sa.Column("patient_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("expected", sa.Integer(), nullable=True),
        sa.Column("received", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=True),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("study_instance_uid"),
    )
    op.create_index(
        op.f("ix_cohort_study_patient_id"), "cohort_study", ["patient_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_cohort_study_patient_id"), table_name="cohort_study")
    op.drop_table("cohort_study")
    op.drop_index(op.f("ix_cohort_patient_patient_id"), table_name="cohort_patient")
    op.drop_table("cohort_patient")
