"""The shard slots each volunteer was handed for each job: the assignments table (validation of
updates on the volunteer's own data).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 13:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "assignments",
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("volunteer_id", sa.String(64), nullable=False),
        sa.Column("slots", sa.Text(), nullable=False),
        sa.Column("assigned_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "volunteer_id", name="pk_assignments"),
    )


def downgrade() -> None:
    op.drop_table("assignments")
