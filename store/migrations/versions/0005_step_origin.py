"""steps: origin_step_id, the original run's step at the same causal position in a fork

Hand-written for SQLite and PostgreSQL alike: one nullable column through batch_alter_table
(which SQLite needs and PostgreSQL treats as a plain ALTER). NULL outside forks.

A fork re-executes from one of its parent's steps with fresh, deterministic ids; each of its
steps remembers the parent's step it stands for, so a recorded fork finds the parent's model
response or tool result with one primary-key read.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("steps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("origin_step_id", sa.String(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("steps", schema=None) as batch_op:
        batch_op.drop_column("origin_step_id")
