"""provenance (CPU, ISA features, threads, GPU, executor), batch-norm diagnostics,
evaluations with batch statistics, and exactly-once trial claims

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0003'
down_revision: Union[str, None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

def provenance_columns() -> list[sa.Column]:
    return [
    sa.Column('cpu_model', sa.String(length=255), nullable=True),
    sa.Column('cpu_features', sa.String(length=255), nullable=True),
    sa.Column('torch_threads', sa.Integer(), nullable=True),
    sa.Column('gpu_name', sa.String(length=255), nullable=True),
    sa.Column('executor', sa.String(length=32), nullable=True),
    sa.Column('diagnostics', sa.Boolean(), nullable=True),
    sa.Column('claim', sa.Integer(), nullable=True),
    sa.Column('claim_token', sa.String(length=64), nullable=True),
    ]


# The latest row of each (configuration, seed) that ran to an outcome or is running holds the
# claim; older duplicates (two sweeps that ran the same trial) stay unclaimed, as history.
CLAIM_LATEST = """
UPDATE runs SET claim = 1
WHERE status IN ('running', 'completed', 'diverged')
  AND id = (SELECT MAX(other.id) FROM runs AS other
            WHERE other.config_key = runs.config_key AND other.seed = runs.seed
              AND other.status IN ('running', 'completed', 'diverged'))
"""


def upgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        for column in provenance_columns():
            batch_op.add_column(column)
    op.execute(CLAIM_LATEST)
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.create_index('uq_runs_trial_claim', ['config_key', 'seed', 'claim'], unique=True)
        batch_op.create_index(batch_op.f('ix_runs_claim_token'), ['claim_token'], unique=False)
    op.create_table('diagnostics',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('epoch', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('x', sa.Float(), nullable=True),
    sa.Column('value', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('diagnostics', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_diagnostics_run_id'), ['run_id'], unique=False)
    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('batch_stats_json', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.drop_column('batch_stats_json')
    with op.batch_alter_table('diagnostics', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_diagnostics_run_id'))
    op.drop_table('diagnostics')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_runs_claim_token'))
        batch_op.drop_index('uq_runs_trial_claim')
        for column in reversed(provenance_columns()):
            batch_op.drop_column(column.name)
