"""The fused CPU kernel's build: which vector instruction set bnrun's C++ batch norm was compiled for

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: Union[str, None] = '0007'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


# Earlier runs: NULL (unknown; their cpu_features say what the machine had). Plain ADD COLUMN,
# never batch mode on `runs` (see 0004).
def upgrade() -> None:
    op.add_column('runs', sa.Column('kernel_isa', sa.String(length=16), nullable=True))


def downgrade() -> None:
    op.drop_column('runs', 'kernel_isa')
