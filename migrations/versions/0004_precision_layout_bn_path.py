"""precision and memory layout as trial options, and the batch-norm path each trial actually ran

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0004'
down_revision: Union[str, None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# Every earlier trial ran fp32 in NCHW order. Its BN path is known where there was no choice
# (no BN, torch.nn's, the eager custom BN); a fused trial of that time may have fallen back
# to eager, unrecorded, so it stays NULL (unknown) rather than guessed.
KNOWN_PATHS = """
UPDATE runs SET bn_path = CASE
    WHEN bn = 'none' THEN 'none'
    WHEN bn_impl = 'torch' THEN 'torch'
    WHEN NOT fused THEN 'eager'
END
"""


# Plain ALTER TABLE ADD/DROP COLUMN, never batch mode: SQLite's batch mode copies `runs` and drops
# the original, and with foreign keys on, that drop cascades into every epoch and checkpoint.
def upgrade() -> None:
    op.add_column('runs', sa.Column('precision', sa.String(length=8), nullable=False, server_default='fp32'))
    op.add_column('runs', sa.Column('channels_last', sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column('runs', sa.Column('bn_path', sa.String(length=64), nullable=True))
    op.execute(KNOWN_PATHS)


def downgrade() -> None:
    for column in ('bn_path', 'channels_last', 'precision'):
        op.drop_column('runs', column)
