"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-24
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0001'
down_revision: Union[str, None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('arch', sa.String(length=8), nullable=False),
    sa.Column('bn', sa.String(length=8), nullable=False),
    sa.Column('bn_impl', sa.String(length=8), nullable=False),
    sa.Column('fused', sa.Boolean(), nullable=False),
    sa.Column('seed', sa.Integer(), nullable=False),
    sa.Column('epochs', sa.Integer(), nullable=False),
    sa.Column('batch_size', sa.Integer(), nullable=False),
    sa.Column('lr', sa.Float(), nullable=False),
    sa.Column('momentum', sa.Float(), nullable=False),
    sa.Column('weight_decay', sa.Float(), nullable=False),
    sa.Column('optimizer', sa.String(length=16), nullable=False),
    sa.Column('schedule', sa.String(length=16), nullable=False),
    sa.Column('augment', sa.Boolean(), nullable=False),
    sa.Column('train_subset', sa.Integer(), nullable=True),
    sa.Column('device', sa.String(length=16), nullable=False),
    sa.Column('config_key', sa.String(length=32), nullable=False),
    sa.Column('config_json', sa.Text(), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('ended_at', sa.DateTime(), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(), nullable=True),
    sa.Column('duration_s', sa.Float(), nullable=True),
    sa.Column('epochs_completed', sa.Integer(), nullable=False),
    sa.Column('train_loss', sa.Float(), nullable=True),
    sa.Column('train_acc', sa.Float(), nullable=True),
    sa.Column('val_acc', sa.Float(), nullable=True),
    sa.Column('best_val_acc', sa.Float(), nullable=True),
    sa.Column('test_loss_running', sa.Float(), nullable=True),
    sa.Column('test_acc_running', sa.Float(), nullable=True),
    sa.Column('test_loss_population', sa.Float(), nullable=True),
    sa.Column('test_acc_population', sa.Float(), nullable=True),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('bnrun_version', sa.String(length=32), nullable=False),
    sa.Column('torch_version', sa.String(length=32), nullable=False),
    sa.Column('python_version', sa.String(length=32), nullable=False),
    sa.Column('git_commit', sa.String(length=40), nullable=True),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_runs_arch'), ['arch'], unique=False)
        batch_op.create_index(batch_op.f('ix_runs_bn'), ['bn'], unique=False)
        batch_op.create_index(batch_op.f('ix_runs_config_key'), ['config_key'], unique=False)
        batch_op.create_index(batch_op.f('ix_runs_status'), ['status'], unique=False)

    op.create_table('checkpoints',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('blob', sa.LargeBinary(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size_bytes', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('run_id')
    )
    op.create_table('epochs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('epoch', sa.Integer(), nullable=False),
    sa.Column('train_loss', sa.Float(), nullable=False),
    sa.Column('train_acc', sa.Float(), nullable=False),
    sa.Column('val_loss', sa.Float(), nullable=False),
    sa.Column('val_acc', sa.Float(), nullable=False),
    sa.Column('lr', sa.Float(), nullable=False),
    sa.Column('seconds', sa.Float(), nullable=False),
    sa.Column('train_seconds', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('run_id', 'epoch', name='uq_epochs_run_epoch')
    )
    with op.batch_alter_table('epochs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_epochs_run_id'), ['run_id'], unique=False)

    op.create_table('evaluations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('device', sa.String(length=16), nullable=False),
    sa.Column('val_acc_running', sa.Float(), nullable=False),
    sa.Column('val_acc_population', sa.Float(), nullable=False),
    sa.Column('test_loss_running', sa.Float(), nullable=False),
    sa.Column('test_acc_running', sa.Float(), nullable=False),
    sa.Column('test_loss_population', sa.Float(), nullable=False),
    sa.Column('test_acc_population', sa.Float(), nullable=False),
    sa.Column('matches_stored', sa.Boolean(), nullable=False),
    sa.Column('bnrun_version', sa.String(length=32), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_evaluations_run_id'), ['run_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_evaluations_run_id'))

    op.drop_table('evaluations')
    with op.batch_alter_table('epochs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_epochs_run_id'))

    op.drop_table('epochs')
    op.drop_table('checkpoints')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_runs_status'))
        batch_op.drop_index(batch_op.f('ix_runs_config_key'))
        batch_op.drop_index(batch_op.f('ix_runs_bn'))
        batch_op.drop_index(batch_op.f('ix_runs_arch'))

    op.drop_table('runs')