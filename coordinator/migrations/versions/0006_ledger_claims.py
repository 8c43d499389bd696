"""Claimed and granted in each ledger row: the ledger's claimed_samples and claimed_compute_us
columns (NULL on earlier rows, whose hash covers no claim).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 13:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("ledger") as batch:
        batch.add_column(sa.Column("claimed_samples", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("claimed_compute_us", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ledger") as batch:
        batch.drop_column("claimed_compute_us")
        batch.drop_column("claimed_samples")
