"""How volunteers take part in each job's swarm: the swarm_peers table.

Revision ID: 0002
Revises: 0001
Create Date: 2025-06-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "swarm_peers",
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("volunteer_id", sa.String(64), nullable=False),
        sa.Column("reachability", sa.String(16), nullable=False, server_default="unknown"),
        sa.Column("observed", sa.Text(), nullable=False, server_default=""),
        sa.Column("last_round_epoch", sa.Integer(), nullable=True),
        sa.Column("averaged_in_last_round", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "volunteer_id", name="pk_swarm_peers"),
    )
    op.create_index("ix_swarm_peers_volunteer_id", "swarm_peers", ["volunteer_id"])


def downgrade() -> None:
    op.drop_index("ix_swarm_peers_volunteer_id", table_name="swarm_peers")
    op.drop_table("swarm_peers")
