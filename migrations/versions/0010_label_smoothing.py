"""Cross-entropy label smoothing, a training option

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0010'
down_revision: Union[str, None] = '0009'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


# Every earlier trial trained on plain cross-entropy: label smoothing 0. Plain ADD COLUMN (see 0004).
def upgrade() -> None:
    op.add_column('runs', sa.Column('label_smoothing', sa.Float(), nullable=False, server_default='0'))


def downgrade() -> None:
    op.drop_column('runs', 'label_smoothing')
