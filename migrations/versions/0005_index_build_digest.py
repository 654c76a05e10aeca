"""index build digest: bind an index build to its set through its manifest's sha256

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 15:30:00.000000
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0005'
down_revision: Union[str, None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # Existing rows stay NULL: their manifests were never digested, so a reader refuses them
    # until the set is re-indexed (reading today's manifest files would trust whatever is there).
    with op.batch_alter_table('index_builds', schema=None) as batch_op:
        batch_op.add_column(sa.Column('manifest_sha256', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('index_builds', schema=None) as batch_op:
        batch_op.drop_column('manifest_sha256')
