"""corpus version numbers: each corpus's versions numbered 1, 2, ... and unique per corpus

Two processes that record a version of the same corpus at once both try the next number; the
unique (corpus_id, seq) lets one row win (insert ... on conflict do nothing) and the other read
it, so a corpus version is stored once however many machines materialize it (issue #28).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-10 10:00:00.000000
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0013'
down_revision: Union[str, None] = '0012'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

UNIQUE = 'uq_corpus_versions_corpus_id_seq'


def upgrade() -> None:
    op.add_column('corpus_versions', sa.Column('seq', sa.Integer(), nullable=True))
    # existing versions: numbered in the order they were recorded (ids only grow)
    op.execute("UPDATE corpus_versions SET seq = (SELECT count(*) FROM corpus_versions AS earlier "
               "WHERE earlier.corpus_id = corpus_versions.corpus_id AND earlier.id <= corpus_versions.id)")
    # a unique index, not a table constraint: SQLite would rebuild the table for a constraint,
    # which its foreign keys (on in the catalog) refuse while other tables point at the rows
    op.create_index(UNIQUE, 'corpus_versions', ['corpus_id', 'seq'], unique=True)
    if op.get_bind().dialect.name != 'sqlite':  # SQLite cannot add NOT NULL without that rebuild
        op.alter_column('corpus_versions', 'seq', existing_type=sa.Integer(), nullable=False)


def downgrade() -> None:
    op.drop_index(UNIQUE, table_name='corpus_versions')
    op.drop_column('corpus_versions', 'seq')  # ALTER TABLE ... DROP COLUMN, no rebuild (SQLite >= 3.35)
