"""lineage: sources per corpus version, what each model read, deployment ends

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 16:30:00.000000
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0006'
down_revision: Union[str, None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_MODEL_COLUMNS = (
    ('neighbours_key', sa.String(length=64)),
    ('vocabulary_digest', sa.String(length=64)),
    ('reads_table', sa.String(length=128)),
    ('reads_lance_version', sa.BigInteger()),
    ('reads_digest', sa.String(length=64)),
    ('n_training_chunks', sa.BigInteger()),
    ('n_neighbour_chunks', sa.BigInteger()),
)


def upgrade() -> None:
    # Rows recorded before this revision keep NULLs: what they read was never written down, and
    # an audit says so rather than guessing from today's files.
    op.create_table('corpus_version_sources',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('corpus_version_id', sa.Integer(), nullable=False),
    sa.Column('doc_id', sa.String(length=32), nullable=False),
    sa.Column('source_uri', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['corpus_version_id'], ['corpus_versions.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['doc_id'], ['documents.doc_id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('corpus_version_sources', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_corpus_version_sources_corpus_version_id'),
                              ['corpus_version_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_corpus_version_sources_doc_id'), ['doc_id'], unique=False)
    with op.batch_alter_table('corpus_version_documents', schema=None) as batch_op:
        batch_op.add_column(sa.Column('n_bytes', sa.BigInteger(), nullable=True))
    with op.batch_alter_table('models', schema=None) as batch_op:
        for name, type_ in _MODEL_COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=True))
    with op.batch_alter_table('deployments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('deployments', schema=None) as batch_op:
        batch_op.drop_column('ended_at')
    with op.batch_alter_table('models', schema=None) as batch_op:
        for name, _ in reversed(_MODEL_COLUMNS):
            batch_op.drop_column(name)
    with op.batch_alter_table('corpus_version_documents', schema=None) as batch_op:
        batch_op.drop_column('n_bytes')
    with op.batch_alter_table('corpus_version_sources', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_corpus_version_sources_doc_id'))
        batch_op.drop_index(batch_op.f('ix_corpus_version_sources_corpus_version_id'))
    op.drop_table('corpus_version_sources')
