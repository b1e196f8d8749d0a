"""The schema: blank → head, down/up round trip, and no drift between ORM and migrations."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from bnrun.store import Store, migrate
from bnrun.store.models import Base

EXPECTED_TABLES = {"alembic_version", "runs", "epochs", "checkpoints", "evaluations", "diagnostics", "tags"}


def test_blank_store_is_migrated_to_head(tmp_path):
    db = tmp_path / "new.db"
    store = Store(str(db))
    with store.engine.connect() as connection:
        assert migrate.current_revision(connection) == migrate.head_revision()
        inspector = inspect(connection)
        assert set(inspector.get_table_names()) == EXPECTED_TABLES
        assert {c["name"] for c in inspector.get_columns("epochs")} == {"id", "run_id", "epoch", "train_loss", "train_acc", "val_loss",
                                                                       "val_acc", "lr", "seconds", "train_seconds"}
        assert {"grid_seeds", "cpu_model", "cpu_features", "torch_threads", "gpu_name", "executor", "diagnostics"} <= {
            c["name"] for c in inspector.get_columns("runs")}
        assert {c["name"] for c in inspector.get_columns("diagnostics")} == {"id", "run_id", "kind", "epoch", "name", "x", "value"}
        assert {c["name"] for c in inspector.get_columns("checkpoints")} == {"id", "run_id", "blob", "sha256", "size_bytes", "created_at"}
        assert {"deleted_at", "user_note"} <= {c["name"] for c in inspector.get_columns("runs")}
        assert {"cuda_version", "cudnn_version", "gpu_driver", "tf32", "cudnn_deterministic"} <= {
            c["name"] for c in inspector.get_columns("runs")}
        assert "kernel_isa" in {c["name"] for c in inspector.get_columns("runs")}
        assert {c["name"] for c in inspector.get_columns("tags")} == {"run_id", "tag"}
        assert inspector.get_pk_constraint("tags")["constrained_columns"] == ["run_id", "tag"]
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    store.close()


def test_downgrade_then_upgrade_round_trip(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'rt.db'}")
    with engine.connect() as connection:
        migrate.upgrade(connection)
        connection.commit()
        migrate.downgrade(connection, "base")
        connection.commit()
        assert set(inspect(connection).get_table_names()) == {"alembic_version"}
        migrate.upgrade(connection)
        connection.commit()
        assert set(inspect(connection).get_table_names()) == EXPECTED_TABLES


def test_orm_models_match_migrations(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'drift.db'}")
    with engine.connect() as connection:
        migrate.upgrade(connection)
        connection.commit()
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []


def test_migrations_found_from_package():
    assert (migrate.migrations_dir() / "env.py").is_file()
    assert migrate.head_revision() in migrate.known_revisions()
