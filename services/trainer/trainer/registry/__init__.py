"""The trainer's model registry: specs, runs, steps, versions, rejections, deployments.

``Registry(url)`` over SQLite (``sqlite:///path/registry.db``) or PostgreSQL
(``postgresql+psycopg://user@host:port/db``); its schema is managed by the alembic
migrations in ``migrations/`` (``Registry.migrate()``).
"""

from __future__ import annotations

from trainer.registry.errors import (
    InvalidTransition,
    RegistryError,
    RunConflict,
    SpecExists,
    UnknownRun,
    UnknownSpec,
    UnknownVersion,
)
from trainer.registry.records import (
    DeploymentChangeRecord,
    DeploymentRecord,
    RejectedRecord,
    RunRecord,
    SpecRecord,
    StepRecord,
    VersionRecord,
)
from trainer.registry.store import DATABASE_URL_ENV, Registry
from trainer.registry.tables import RunMode, RunStatus

__all__ = [
    "DATABASE_URL_ENV",
    "DeploymentChangeRecord",
    "DeploymentRecord",
    "InvalidTransition",
    "Registry",
    "RegistryError",
    "RejectedRecord",
    "RunConflict",
    "RunMode",
    "RunRecord",
    "RunStatus",
    "SpecExists",
    "SpecRecord",
    "StepRecord",
    "UnknownRun",
    "UnknownSpec",
    "UnknownVersion",
    "VersionRecord",
]
