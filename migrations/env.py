"""Alembic environment for bnrun: runs on the connection bnrun hands over in
`config.attributes["connection"]` (see bnrun/store/migrate.py)."""

from alembic import context

from bnrun.store.models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("bnrun migrations run through bnrun.store.migrate, which passes a connection")

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
