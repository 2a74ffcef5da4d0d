"""ImportReport.n_tie: pairwise judgements that prefer neither response are skipped and counted.

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("import_report") as batch_op:
        batch_op.add_column(sa.Column("n_tie", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("import_report") as batch_op:
        batch_op.drop_column("n_tie")
