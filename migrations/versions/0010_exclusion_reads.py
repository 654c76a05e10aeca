"""exclusion reads: excluded text shown to a person on request, audited

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08 10:00:00.000000
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0010'
down_revision: Union[str, None] = '0009'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # One row per excluded chunk whose text a command showed (`--include-excluded`): ids only,
    # never the text itself.
    op.create_table('exclusion_reads',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('exclusion_id', sa.Integer(), nullable=False),
    sa.Column('chunk_id', sa.BigInteger(), nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('purpose', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['exclusion_id'], ['exclusions.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('exclusion_reads', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_exclusion_reads_exclusion_id'), ['exclusion_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('exclusion_reads', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_exclusion_reads_exclusion_id'))
    op.drop_table('exclusion_reads')
