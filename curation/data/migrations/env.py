"""Alembic environment: runs on the connection that `curation.data.store.db.migrate` hands over."""

from alembic import context

from curation.data.store.db import include_object
from curation.data.store.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    include_object=include_object,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
