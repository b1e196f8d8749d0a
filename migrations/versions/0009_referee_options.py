"""The referee's trial options (a study tag, the initialization, ghost batch size, a target training
loss) and what stopped a run's training

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0009'
down_revision: Union[str, None] = '0008'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

COLUMNS = ('study', 'init', 'ghost_batch', 'target_loss', 'stopped_by')


# Every earlier trial ran untagged, with torch's default initialization, BN statistics over the
# whole batch and no target loss (NULL, 'default', NULL, NULL); what stopped it is unknown (NULL).
# Plain ADD COLUMN, never batch mode on `runs` (see 0004).
def upgrade() -> None:
    op.add_column('runs', sa.Column('study', sa.String(length=64), nullable=True))
    op.add_column('runs', sa.Column('init', sa.String(length=16), nullable=False, server_default='default'))
    op.add_column('runs', sa.Column('ghost_batch', sa.Integer(), nullable=True))
    op.add_column('runs', sa.Column('target_loss', sa.Float(), nullable=True))
    op.add_column('runs', sa.Column('stopped_by', sa.String(length=16), nullable=True))


def downgrade() -> None:
    for column in reversed(COLUMNS):
        op.drop_column('runs', column)
