"""model options (depth, width, dropout) and the training split's metrics in prediction mode

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: Union[str, None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

COLUMNS = ('depth', 'width', 'dropout', 'train_loss_population', 'train_acc_population')


# Every earlier trial ran the assignment's models (depth and width NULL) without dropout; plain
# ADD COLUMN, never batch mode (see 0004).
def upgrade() -> None:
    op.add_column('runs', sa.Column('depth', sa.Integer(), nullable=True))
    op.add_column('runs', sa.Column('width', sa.Integer(), nullable=True))
    op.add_column('runs', sa.Column('dropout', sa.Float(), nullable=False, server_default='0'))
    op.add_column('runs', sa.Column('train_loss_population', sa.Float(), nullable=True))
    op.add_column('runs', sa.Column('train_acc_population', sa.Float(), nullable=True))


def downgrade() -> None:
    for column in reversed(COLUMNS):
        op.drop_column('runs', column)
