"""run management: soft deletes, a free-text note of the user's, and tags

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: Union[str, None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


# `note` keeps its meaning (why a trial failed); the user's own note is `user_note`. Plain ADD
# COLUMN and CREATE TABLE, never batch mode on `runs` (see 0004).
def upgrade() -> None:
    op.add_column('runs', sa.Column('deleted_at', sa.DateTime(), nullable=True))
    op.add_column('runs', sa.Column('user_note', sa.Text(), nullable=True))
    op.create_table('tags',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('tag', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'tag')
    )
    op.create_index('ix_tags_tag', 'tags', ['tag'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_tags_tag', table_name='tags')
    op.drop_table('tags')
    for column in ('user_note', 'deleted_at'):
        op.drop_column('runs', column)
