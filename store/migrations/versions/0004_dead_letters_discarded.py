"""dead letters: discarded_at; indexes for the dead-letter list and per-agent reports

Hand-written for SQLite and PostgreSQL alike: two nullable columns and two indexes,
through batch_alter_table (which SQLite needs and PostgreSQL treats as plain ALTERs).

- ``dead_letters.discarded_at``: when an operator took a dead letter off the list (discarded
  it, or re-published it); the row itself stays, unlike Redis's own dead letters.
- ``steps.discarded_at``: the same for a step that failed for good. A failure newer than it
  (the step was replayed and failed again) is listed again.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.add_column(sa.Column("discarded_at", sa.Float(), nullable=True))
        batch_op.create_index(
            "ix_dead_letters_discarded_created", ["discarded_at", "created_at"], unique=False
        )
    with op.batch_alter_table("steps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("discarded_at", sa.Float(), nullable=True))
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index("ix_runs_agent_created", ["agent", "created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_agent_created")
    with op.batch_alter_table("steps", schema=None) as batch_op:
        batch_op.drop_column("discarded_at")
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.drop_index("ix_dead_letters_discarded_created")
        batch_op.drop_column("discarded_at")
