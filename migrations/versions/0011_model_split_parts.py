"""model split parts: the validation share and document grouping of each model's split

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 12:00:00.000000
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0011'
down_revision: Union[str, None] = '0010'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_MODEL_COLUMNS = (
    ('split_validation_share', sa.Float()),
    ('split_group_by', sa.String(length=16)),
)


def upgrade() -> None:
    # Rows recorded before this revision keep NULLs: they were split with no validation part and
    # one group per document, which is what evaluation assumes for them.
    with op.batch_alter_table('models', schema=None) as batch_op:
        for name, type_ in _MODEL_COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('models', schema=None) as batch_op:
        for name, _ in reversed(_MODEL_COLUMNS):
            batch_op.drop_column(name)
