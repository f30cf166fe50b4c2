"""The registry's first schema: specs, runs, steps, versions, rejections, deployments.

Revision ID: 0001
Revises:
Create Date: 2026-12-04

Written by hand to match ``trainer/registry/tables.py``; tests/integration/test_registry.py
compares the two on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamp(name: str, *, nullable: bool = False) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "model_specs",
        sa.Column("id", sa.String(length=63), nullable=False),
        sa.Column("family", sa.String(length=64), nullable=False),
        sa.Column("hyperparameters", sa.JSON(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("last_version", sa.Integer(), nullable=False),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_specs")),
    )
    op.create_table(
        "training_runs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("spec_id", sa.String(length=63), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("start_offsets", sa.JSON(), nullable=False),
        sa.Column("end_offsets", sa.JSON(), nullable=True),
        sa.Column("trained_through", sa.JSON(), nullable=True),
        sa.Column("events_trained", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        _timestamp("created_at"),
        _timestamp("started_at", nullable=True),
        _timestamp("finished_at", nullable=True),
        _timestamp("updated_at"),
        sa.CheckConstraint("mode IN ('batch', 'incremental')", name=op.f("ck_training_runs_mode")),
        sa.CheckConstraint(
            "status IN ('requested', 'running', 'succeeded', 'failed', 'stopped')",
            name=op.f("ck_training_runs_status"),
        ),
        sa.CheckConstraint("events_trained >= 0", name=op.f("ck_training_runs_events_trained")),
        sa.ForeignKeyConstraint(
            ["spec_id"], ["model_specs.id"], name=op.f("fk_training_runs_spec_id_model_specs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_runs")),
    )
    op.create_index(
        "ix_training_runs_spec_id_created_at", "training_runs", ["spec_id", "created_at"]
    )
    op.create_index("ix_training_runs_status", "training_runs", ["status"])
    op.create_table(
        "run_steps",
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        _timestamp("recorded_at"),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("loss", sa.Float(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["training_runs.id"], name=op.f("fk_run_steps_run_id_training_runs")
        ),
        sa.PrimaryKeyConstraint("run_id", "step", name=op.f("pk_run_steps")),
    )
    op.create_table(
        "model_versions",
        sa.Column("spec_id", sa.String(length=63), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=True),
        sa.Column("artifact_uri", sa.Text(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("baseline_metrics", sa.JSON(), nullable=True),
        sa.Column("trained_through", sa.JSON(), nullable=False),
        sa.Column("events_trained", sa.Integer(), nullable=False),
        _timestamp("created_at"),
        sa.CheckConstraint("version >= 1", name=op.f("ck_model_versions_version")),
        sa.ForeignKeyConstraint(
            ["run_id"], ["training_runs.id"], name=op.f("fk_model_versions_run_id_training_runs")
        ),
        sa.ForeignKeyConstraint(
            ["spec_id"], ["model_specs.id"], name=op.f("fk_model_versions_spec_id_model_specs")
        ),
        sa.PrimaryKeyConstraint("spec_id", "version", name=op.f("pk_model_versions")),
    )
    op.create_index(op.f("ix_model_versions_run_id"), "model_versions", ["run_id"])
    op.create_table(
        "rejected_candidates",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("spec_id", sa.String(length=63), nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("baseline_metrics", sa.JSON(), nullable=True),
        sa.Column("trained_through", sa.JSON(), nullable=False),
        sa.Column("events_trained", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        _timestamp("created_at"),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["training_runs.id"],
            name=op.f("fk_rejected_candidates_run_id_training_runs"),
        ),
        sa.ForeignKeyConstraint(
            ["spec_id"],
            ["model_specs.id"],
            name=op.f("fk_rejected_candidates_spec_id_model_specs"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rejected_candidates")),
    )
    op.create_index(op.f("ix_rejected_candidates_run_id"), "rejected_candidates", ["run_id"])
    op.create_index("ix_rejected_candidates_spec_id_id", "rejected_candidates", ["spec_id", "id"])
    op.create_table(
        "deployments",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("spec_id", sa.String(length=63), nullable=False),
        sa.Column("stable_version", sa.Integer(), nullable=True),
        sa.Column("canary_version", sa.Integer(), nullable=True),
        sa.Column("canary_weight", sa.Float(), nullable=False),
        _timestamp("updated_at"),
        sa.CheckConstraint(
            "canary_weight >= 0 AND canary_weight <= 1", name=op.f("ck_deployments_canary_weight")
        ),
        sa.ForeignKeyConstraint(
            ["spec_id", "canary_version"],
            ["model_versions.spec_id", "model_versions.version"],
            name=op.f("fk_deployments_spec_id_canary_version_model_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["spec_id", "stable_version"],
            ["model_versions.spec_id", "model_versions.version"],
            name=op.f("fk_deployments_spec_id_stable_version_model_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["spec_id"], ["model_specs.id"], name=op.f("fk_deployments_spec_id_model_specs")
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_deployments")),
    )
    op.create_table(
        "deployment_history",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("spec_id", sa.String(length=63), nullable=False),
        sa.Column("stable_version", sa.Integer(), nullable=True),
        sa.Column("canary_version", sa.Integer(), nullable=True),
        sa.Column("canary_weight", sa.Float(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        _timestamp("changed_at"),
        sa.ForeignKeyConstraint(
            ["spec_id"],
            ["model_specs.id"],
            name=op.f("fk_deployment_history_spec_id_model_specs"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployment_history")),
    )
    op.create_index("ix_deployment_history_name_id", "deployment_history", ["name", "id"])


def downgrade() -> None:
    op.drop_table("deployment_history")
    op.drop_table("deployments")
    op.drop_table("rejected_candidates")
    op.drop_table("model_versions")
    op.drop_table("run_steps")
    op.drop_table("training_runs")
    op.drop_table("model_specs")
