"""CUDA provenance: the CUDA, cuDNN and driver versions, TF32 and cuDNN determinism of a GPU run

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: Union[str, None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

COLUMNS = ('cuda_version', 'cudnn_version', 'gpu_driver', 'tf32', 'cudnn_deterministic')


# Every earlier run trained on the CPU, where none of these applies: NULL. Plain ADD COLUMN,
# never batch mode on `runs` (see 0004).
def upgrade() -> None:
    op.add_column('runs', sa.Column('cuda_version', sa.String(length=32), nullable=True))
    op.add_column('runs', sa.Column('cudnn_version', sa.String(length=32), nullable=True))
    op.add_column('runs', sa.Column('gpu_driver', sa.String(length=64), nullable=True))
    op.add_column('runs', sa.Column('tf32', sa.Boolean(), nullable=True))
    op.add_column('runs', sa.Column('cudnn_deterministic', sa.Boolean(), nullable=True))


def downgrade() -> None:
    for column in reversed(COLUMNS):
        op.drop_column('runs', column)
