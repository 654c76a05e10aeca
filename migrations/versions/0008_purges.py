"""purges: documents erased from every store, remembered by hash so they are never stored again

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 18:00:00.000000
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0008'
down_revision: Union[str, None] = '0007'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # One row per purged document: written (status 'pending') before anything is deleted, so a
    # purge killed midway is finished by the next one. Hashes only: no text, no path.
    op.create_table('purged_documents',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('doc_id', sa.String(length=32), nullable=False),
    sa.Column('exclusion_id', sa.Integer(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False, server_default='pending'),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('source_hashes', sa.JSON(), nullable=False),
    sa.Column('chunks', sa.JSON(), nullable=False),
    sa.Column('held_by', sa.JSON(), nullable=False),
    sa.Column('report', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['exclusion_id'], ['exclusions.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('purged_documents', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_purged_documents_doc_id'), ['doc_id'], unique=True)


def downgrade() -> None:
    with op.batch_alter_table('purged_documents', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_purged_documents_doc_id'))
    op.drop_table('purged_documents')
