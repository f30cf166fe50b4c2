"""Alembic environment of the registry.

Two ways in: ``Registry.migrate()`` passes its open connection in
``config.attributes["connection"]``; the alembic CLI
(``alembic -c services/trainer/alembic.ini upgrade head``) connects to ``sqlalchemy.url`` or,
when that is empty, to ``$STREAMREC_TRAINER_DATABASE_URL``.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection
from trainer.registry.store import (
    DATABASE_URL_ENV,
    create_registry_engine,
    for_writes,
    lock_for_migration,
)
from trainer.registry.tables import metadata

config = context.config


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get(DATABASE_URL_ENV)
    if not url:
        raise RuntimeError(f"no database: set sqlalchemy.url or ${DATABASE_URL_ENV}")
    return url


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things: alembic copies the table instead ("batch" mode).
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    """``alembic upgrade head --sql``: print the SQL instead of running it."""
    url = _url()
    context.configure(
        url=url,
        target_metadata=metadata,
        literal_binds=True,
        render_as_batch=url.startswith("sqlite"),
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    if (connection := config.attributes.get("connection")) is not None:
        _run(connection)  # Registry.migrate(): its transaction, its lock
        return
    engine = create_registry_engine(_url())
    try:
        with for_writes(engine).begin() as connection:
            lock_for_migration(connection)
            _run(connection)
    finally:
        engine.dispose()


if config.config_file_name is not None:  # the CLI's alembic.ini configures logging
    fileConfig(config.config_file_name, disable_existing_loggers=False)

if context.is_offline_mode():
    run_offline()
else:
    run_online()
