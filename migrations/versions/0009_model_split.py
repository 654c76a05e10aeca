"""model split: the train / held-out split each model was trained with

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 18:10:00.000000
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0009'
down_revision: Union[str, None] = '0008'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_MODEL_COLUMNS = (
    ('split_seed', sa.Integer()),
    ('split_heldout_fraction', sa.Float()),
    ('split_min_heldout', sa.Integer()),
)


def upgrade() -> None:
    # Rows recorded before this revision keep NULLs: their split was never written down, so
    # evaluation falls back to refusing their recorded training documents.
    with op.batch_alter_table('models', schema=None) as batch_op:
        for name, type_ in _MODEL_COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('models', schema=None) as batch_op:
        for name, _ in reversed(_MODEL_COLUMNS):
            batch_op.drop_column(name)
