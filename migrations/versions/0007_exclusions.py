"""exclusions: scopes (chunk, content hash, document), scorer, audited revoke

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 17:00:00.000000
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0007'
down_revision: Union[str, None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # Rows recorded before this revision were chunk exclusions: their target is the chunk id.
    with op.batch_alter_table('exclusions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('scope', sa.String(length=16), nullable=False,
                                      server_default='chunk'))
        batch_op.add_column(sa.Column('target', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('scorer', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('revoked_by', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('revoke_reason', sa.Text(), nullable=True))
        batch_op.alter_column('chunk_id', existing_type=sa.BigInteger(), nullable=True)
    op.execute("UPDATE exclusions SET target = CAST(chunk_id AS VARCHAR(128)) WHERE target IS NULL")
    with op.batch_alter_table('exclusions', schema=None) as batch_op:
        batch_op.alter_column('target', existing_type=sa.String(length=128), nullable=False)
        batch_op.create_index(batch_op.f('ix_exclusions_scope'), ['scope'], unique=False)
        batch_op.create_index(batch_op.f('ix_exclusions_target'), ['target'], unique=False)


def downgrade() -> None:
    # Only chunk exclusions fit the old table; wider scopes cannot be expressed there.
    op.execute("DELETE FROM exclusions WHERE scope <> 'chunk'")
    with op.batch_alter_table('exclusions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_exclusions_target'))
        batch_op.drop_index(batch_op.f('ix_exclusions_scope'))
        batch_op.alter_column('chunk_id', existing_type=sa.BigInteger(), nullable=False)
        for name in ('revoke_reason', 'revoked_by', 'revoked_at', 'scorer', 'target', 'scope'):
            batch_op.drop_column(name)
