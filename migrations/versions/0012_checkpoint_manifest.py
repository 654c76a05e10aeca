"""checkpoint manifest: the sha256 of every file a model is loaded from

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-09 10:00:00.000000
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0012'
down_revision: Union[str, None] = '0011'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_MODEL_COLUMNS = (
    ('checkpoint_sha256', sa.String(length=64)),
    ('checkpoint_manifest', sa.JSON()),
)


def upgrade() -> None:
    # Rows recorded before this revision keep NULLs: only their weights were hashed, so loading
    # them verifies the weights, the config (against the recorded one) and, where recorded, the
    # vocabulary digest, and says what was not covered.
    with op.batch_alter_table('models', schema=None) as batch_op:
        for name, type_ in _MODEL_COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('models', schema=None) as batch_op:
        for name, _ in reversed(_MODEL_COLUMNS):
            batch_op.drop_column(name)
