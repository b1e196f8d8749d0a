"""`Store`: the only code that talks to the database. Methods take and return plain records;
each runs in one short transaction (writes begin IMMEDIATE), and database errors become
`StoreError` lines."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import sqlite3
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, and_, case, delete, false, func, insert, or_, select, text, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from bnrun.config import BN_IMPLS, impl_label, valid_run_id
from bnrun.errors import RunNotFound, StoreError
from bnrun.store.engine import describe, open_engine, open_read_only, resolve_url, sqlite_path
from bnrun.store.models import Checkpoint, Diagnostic, Epoch, Evaluation, Run, Tag
from bnrun.store.records import (
    OUTCOMES,
    CheckpointInfo,
    DiagnosticRecord,
    EpochRecord,
    EvaluationRecord,
    FinalMetrics,
    PurgeRecord,
    RunCriteria,
    RunLabels,
    RunPage,
    RunRecord,
    RunStatus,
    TrialHolder,
    record_from_row,
)

STALE_HEARTBEAT = timedelta(minutes=5)
ORPHAN_NOTE = "process ended without finishing"
LOST_ATTEMPT_NOTE = "attempt lost: its worker or node died, and the executor ran the trial again"
# The fields a page of runs can be sorted by in the database: every stored column but the configuration text.
PAGE_SORT_FIELDS = tuple(name for name in RunRecord.__dataclass_fields__ if name != "config_json")
IN_CHUNK = 500  # ids per IN (...): well under every backend's bound-parameter limit
# The tables' columns in their records' field order, selected as Core rows (no ORM loading, no ORM object):
# each row is RunRecord(*row), EpochRecord(*row).
RUN_COLUMNS = tuple(Run.__table__.c[f.name] for f in fields(RunRecord))
EPOCH_COLUMNS = tuple(Epoch.__table__.c[f.name] for f in fields(EpochRecord))
DIAGNOSTIC_COLUMNS = tuple(Diagnostic.__table__.c[f.name] for f in fields(DiagnosticRecord))


@dataclass(frozen=True)
class Claim:
    """What `claim_run` got: a new run id, or the run that already holds the trial."""

    run_id: int | None
    holder: RunRecord | None


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    """A bnrun results store at a SQLAlchemy URL (a plain path means a SQLite file)."""

    def __init__(self, db: str | None = None, reap: bool = True, read_only: bool = False, create: bool = True) -> None:
        """`read_only`: never write, create, migrate or reap (runs, show, report, plot, reproduce); without
        `create`, a SQLite store that does not exist is refused instead of created (every command but train)."""
        self.url = resolve_url(db)
        self.path = sqlite_path(self.url)
        self.read_only = read_only
        self._scratch_copy = None
        if read_only:
            self.engine, self._scratch_copy = open_read_only(self.url)
            self.migration, self.reaped = None, []
        else:
            self.engine, self.migration = open_engine(self.url, create)
        self._write_engine = self.engine.execution_options(immediate=True)
        # On a server a read-only store's transactions are READ ONLY: the database itself refuses any write.
        server = read_only and self.engine.dialect.name == "postgresql"
        self._read_engine = self.engine.execution_options(postgresql_readonly=True) if server else self.engine
        if not read_only:
            self.reaped = self.reap_orphans() if reap else []

    @property
    def name(self) -> str:
        return str(self.path or self.url)

    def close(self) -> None:
        self.engine.dispose()
        if self._scratch_copy is not None:
            self._scratch_copy.unlink(missing_ok=True)

    @contextlib.contextmanager
    def session(self, write: bool = False) -> Iterator[Session]:
        """One transaction: committed on success, rolled back on error, errors made readable."""
        if write and self.read_only:
            raise StoreError(f"store {self.name} was opened read-only")
        bind = self._write_engine if write else self._read_engine
        try:
            with Session(bind, expire_on_commit=False) as session:
                with session.begin():
                    yield session
        except (SQLAlchemyError, sqlite3.Error) as error:
            raise StoreError(f"store {self.name}: {describe(error)}") from None

    # -- runs -------------------------------------------------------------------------------

    def now(self, session: Session) -> datetime:
        """The database server's clock (naive UTC): heartbeats and staleness never depend on
        which client's clock is right."""
        if self.engine.dialect.name == "postgresql":
            return session.execute(text("SELECT timezone('UTC', now())")).scalar_one()
        if self.engine.dialect.name == "sqlite":
            value = session.execute(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')")).scalar_one()
            return datetime.fromisoformat(value)
        return utcnow()

    def claim_run(self, fields: dict, config_key: str, config_json: str, token: str | None = None,
                  force: bool = False, with_diagnostics: bool = False) -> Claim:
        """Start the trial (config_key, seed) as a `running` row, unless the store already holds
        it: completed or diverged (skipped unless `force`), or running elsewhere. The claim is
        enforced by the database (a unique index over the claimed rows), not by timing.

        `token` identifies one task across an executor's retries: a `running` row with the same
        token is an attempt whose worker died, and is ended `failed` before the new attempt."""
        with self.session(write=True) as session:
            now = self.now(session)
            if token is not None:
                self._end_lost_attempts(session, token, now)
            holder = self._claim_holder(session, config_key, fields["seed"])
            rerun = force or (with_diagnostics and not holder.diagnostics) if holder is not None else False
            if holder is not None and holder.status != RunStatus.RUNNING and rerun:
                holder.claim = None  # stays in the store as it ended; the new run holds the trial
                holder = None
            if holder is not None:
                return Claim(None, record_from_row(RunRecord, holder))
            row = Run(
                status=RunStatus.RUNNING,
                config_key=config_key,
                config_json=config_json,
                started_at=now,
                heartbeat_at=now,
                epochs_completed=0,
                host=socket.gethostname(),
                pid=os.getpid(),
                claim=1,
                claim_token=token,
                **fields,
            )
            try:
                with session.begin_nested():
                    session.add(row)
            except IntegrityError:  # another process claimed it between our read and our insert
                holder = self._claim_holder(session, config_key, fields["seed"])
                return Claim(None, record_from_row(RunRecord, holder) if holder is not None else None)
            return Claim(row.id, None)

    @staticmethod
    def _claim_holder(session: Session, config_key: str, seed: int) -> Run | None:
        query = select(Run).where(Run.config_key == config_key, Run.seed == seed, Run.claim == 1)
        return session.scalars(query).first()

    def _end_lost_attempts(self, session: Session, token: str, now: datetime) -> None:
        for row in session.scalars(select(Run).where(Run.claim_token == token, Run.status == RunStatus.RUNNING)):
            self._end(row, RunStatus.FAILED, LOST_ATTEMPT_NOTE, now)

    def end_attempts(self, tokens: list[str], status: str, note: str) -> list[int]:
        """End the `running` rows of these executor tasks (the driver cancelled them)."""
        if not tokens:
            return []
        with self.session(write=True) as session:
            now = self.now(session)
            running = select(Run).where(Run.claim_token.in_(tokens), Run.status == RunStatus.RUNNING)
            rows = session.scalars(running).all()
            for row in rows:
                self._end(row, status, note, now)
            return [row.id for row in rows]

    def heartbeat(self, run_id: int) -> None:
        """The trial's process is alive: touch its row (server clock), unless it has ended."""
        with self.session(write=True) as session:
            session.execute(
                update(Run)
                .where(Run.id == run_id, Run.status == RunStatus.RUNNING)
                .values(heartbeat_at=self.now(session))
            )

    def add_epoch(self, run_id: int, epoch: EpochRecord, bn_path: str | None = None,
                  kernel_isa: str | None = None) -> None:
        """The epoch's row, the run's latest metrics and (when given) the BN path that ran and the
        fused CPU kernel's build it ran."""
        with self.session(write=True) as session:
            session.add(Epoch(run_id=run_id, **asdict(epoch)))
            values = dict(
                epochs_completed=epoch.epoch,
                heartbeat_at=self.now(session),
                train_loss=epoch.train_loss,
                train_acc=epoch.train_acc,
                val_acc=epoch.val_acc,
            )
            if bn_path is not None:
                values["bn_path"] = bn_path
            if kernel_isa is not None:
                values["kernel_isa"] = kernel_isa
            session.execute(update(Run).where(Run.id == run_id).values(**values))

    def complete_run(self, run_id: int, metrics: FinalMetrics, checkpoint: bytes | None) -> None:
        """Final metrics, the checkpoint (None: trained without one) and the status in one
        transaction: all or nothing."""
        with self.session(write=True) as session:
            run = session.get(Run, run_id)
            now = self.now(session)
            if checkpoint is not None:
                session.add(
                    Checkpoint(
                        run_id=run_id,
                        blob=checkpoint,
                        sha256=hashlib.sha256(checkpoint).hexdigest(),
                        size_bytes=len(checkpoint),
                        created_at=now,
                    )
                )
            for key, value in asdict(metrics).items():
                setattr(run, key, value)
            self._end(run, RunStatus.COMPLETED, None, now)

    def end_run(self, run_id: int, status: str, note: str | None = None, stopped_by: str | None = None) -> None:
        """How the run ended; `stopped_by` (what ended its training) where it got that far."""
        with self.session(write=True) as session:
            run = session.get(Run, run_id)
            if stopped_by is not None:
                run.stopped_by = stopped_by
            self._end(run, status, note, self.now(session))

    @staticmethod
    def _end(run: Run, status: str, note: str | None, now: datetime) -> None:
        """How a run ended; a trial that did not reach an outcome gives up its claim (it runs again)."""
        run.status, run.note, run.ended_at, run.heartbeat_at = status, note, now, now
        run.duration_s = (now - run.started_at).total_seconds()
        if status not in OUTCOMES:
            run.claim = None

    @staticmethod
    def _orphans(rows: list[Run], now: datetime) -> list[Run]:
        """`running` rows whose process is gone on this host, or whose heartbeat is stale by the
        server's clock (a row of another host is judged by its heartbeat alone)."""
        host = socket.gethostname()
        return [
            r
            for r in rows
            if (r.host == host and not pid_alive(r.pid)) or (r.heartbeat_at or r.started_at) < now - STALE_HEARTBEAT
        ]

    def reap_orphans(self) -> list[int]:
        """Mark `running` rows whose process is gone (or whose heartbeat is stale) as failed."""
        with self.session(write=True) as session:
            now = self.now(session)
            orphans = self._orphans(session.scalars(select(Run).where(Run.status == RunStatus.RUNNING)).all(), now)
            for run in orphans:
                self._end(run, RunStatus.FAILED, ORPHAN_NOTE, now)
            return [run.id for run in orphans]

    def orphan_ids(self) -> set[int]:
        """The runs the next writing command will reap (read only: for `bnrun runs` to flag them)."""
        with self.session() as session:
            rows = session.scalars(select(Run).where(Run.status == RunStatus.RUNNING)).all()
            return {run.id for run in self._orphans(rows, self.now(session))}

    def get_run(self, run_id: int) -> RunRecord:
        return self.get_runs([run_id])[0]

    def list_runs(
        self,
        archs: tuple[str, ...] = (),
        placements: tuple[str, ...] = (),
        statuses: tuple[str, ...] = (),
        impls: tuple[str, ...] = (),
        deleted: bool | None = False,
        tags: tuple[str, ...] = (),
    ) -> list[RunRecord]:
        """The runs, by id. `deleted`: False leaves soft-deleted runs out, True lists only them, None
        both; `tags`: only runs that carry every one of them."""
        equal = (("arch", archs), ("bn", placements), ("status", statuses))
        return self.select_runs(
            RunCriteria(tuple((name, values) for name, values in equal if values), impls, deleted=deleted, tags=tags)
        )

    def select_runs(self, criteria: RunCriteria) -> list[RunRecord]:
        """The runs that meet the criteria, by id, selected in the database and read as plain rows."""
        query = select(*RUN_COLUMNS).where(*run_conditions(criteria)).order_by(Run.id)
        with self.session() as session:
            return [RunRecord(*row) for row in core_rows(session, query)]

    def option_counts(self, criteria: RunCriteria, columns: tuple[str, ...]) -> list[tuple]:
        """(the values of `columns`..., status, the lowest run id, how many runs) per distinct combination among
        the runs that meet the criteria: what a report needs to choose one recipe before it reads any run."""
        grouped = [getattr(Run, name) for name in columns]
        query = (select(*grouped, Run.status, func.min(Run.id), func.count()).where(*run_conditions(criteria))
                 .group_by(*grouped, Run.status))
        with self.session() as session:
            return [tuple(row) for row in session.execute(query)]

    def epochs(self, run_id: int) -> list[EpochRecord]:
        with self.session() as session:
            rows = session.scalars(select(Epoch).where(Epoch.run_id == run_id).order_by(Epoch.epoch))
            return [record_from_row(EpochRecord, row) for row in rows]

    def epochs_by_run(self, run_ids: list[int]) -> dict[int, list[EpochRecord]]:
        """Each run's epochs, in order, read as plain rows (IN_CHUNK runs per query)."""
        result: dict[int, list[EpochRecord]] = {run_id: [] for run_id in run_ids}
        with self.session() as session:
            for chunk in chunked(list(result)):
                epochs = Epoch.__table__.c
                query = select(epochs.run_id, *EPOCH_COLUMNS).where(epochs.run_id.in_(chunk)).order_by(
                    epochs.run_id, epochs.epoch)
                for run_id, *values in core_rows(session, query):
                    result[run_id].append(EpochRecord(*values))
        return result

    def add_diagnostics(self, run_id: int, records: list[DiagnosticRecord]) -> None:
        with self.session(write=True) as session:
            session.add_all(Diagnostic(run_id=run_id, **asdict(record)) for record in records)

    def diagnostics_by_run(self, run_ids: list[int]) -> dict[int, list[DiagnosticRecord]]:
        result: dict[int, list[DiagnosticRecord]] = {run_id: [] for run_id in run_ids}
        with self.session() as session:
            for chunk in chunked(list(result)):
                query = select(Diagnostic.run_id, *DIAGNOSTIC_COLUMNS).where(Diagnostic.run_id.in_(chunk)).order_by(
                    Diagnostic.id)
                for run_id, *values in core_rows(session, query):
                    result[run_id].append(DiagnosticRecord(*values))
        return result

    # -- checkpoints and evaluations ------------------------------------------------------------

    def load_checkpoint(self, run_id: int) -> bytes:
        """The stored checkpoint bytes, verified against their SHA-256."""
        with self.session() as session:
            row = session.scalars(select(Checkpoint).where(Checkpoint.run_id == run_id)).first()
            if row is None:
                raise StoreError(
                    f"run {run_id} has no checkpoint (only completed runs keep one: not those trained with "
                    "--no-checkpoint, nor those whose checkpoint bnrun delete --checkpoints removed)"
                )
            blob, digest = row.blob, row.sha256
        if hashlib.sha256(blob).hexdigest() != digest:
            raise StoreError(
                f"the checkpoint of run {run_id} is damaged (SHA-256 mismatch); retrain it with: bnrun train "
                "... --force"
            )
        return blob

    def add_evaluation(self, run_id: int, values: dict) -> EvaluationRecord:
        with self.session(write=True) as session:
            row = Evaluation(run_id=run_id, created_at=utcnow(), **values)
            session.add(row)
            session.flush()
            return record_from_row(EvaluationRecord, row)

    def evaluations(self, run_id: int) -> list[EvaluationRecord]:
        with self.session() as session:
            rows = session.scalars(select(Evaluation).where(Evaluation.run_id == run_id).order_by(Evaluation.id))
            return [record_from_row(EvaluationRecord, row) for row in rows]

    # -- run management: tags, notes, soft deletes, purges -------------------------------------

    def get_runs(self, run_ids: list[int]) -> list[RunRecord]:
        """These runs, in the order asked (deleted ones too); StoreError names any unknown id."""
        with self.session() as session:
            return [record_from_row(RunRecord, row) for row in self._rows(session, run_ids)]

    def _rows(self, session: Session, run_ids: list[int]) -> list[Run]:
        storable = {run_id for run_id in run_ids if valid_run_id(run_id)}  # another id is no run, and no SQL value
        rows = {row.id: row for row in session.scalars(select(Run).where(Run.id.in_(storable)))}
        missing = [str(run_id) for run_id in dict.fromkeys(run_ids) if run_id not in rows]
        if missing:
            raise RunNotFound(f"no run with id {', '.join(missing)} in {self.name}; list them with: bnrun runs",
                              tuple(missing))
        return [rows[run_id] for run_id in dict.fromkeys(run_ids)]

    def labels(self, run_ids: list[int]) -> dict[int, RunLabels]:
        """Each run's tags and note."""
        with self.session() as session:
            return self._labels(session, run_ids)

    @staticmethod
    def _labels(session: Session, run_ids: list[int]) -> dict[int, RunLabels]:
        tags: dict[int, list[str]] = {run_id: [] for run_id in run_ids}
        for row in session.scalars(select(Tag).where(Tag.run_id.in_(set(run_ids))).order_by(Tag.tag)):
            tags[row.run_id].append(row.tag)
        notes = dict(session.execute(select(Run.id, Run.user_note).where(Run.id.in_(set(run_ids)))).all())
        return {run_id: RunLabels(run_id, tuple(tags[run_id]), notes.get(run_id)) for run_id in run_ids}

    def label_runs(
        self, run_ids: list[int], add: tuple[str, ...] = (), remove: tuple[str, ...] = (), note: str | None = None
    ) -> list[RunLabels]:
        """Add and remove tags (adding a tag a run has, or removing one it lacks, changes nothing);
        `note` replaces the user's note ("" clears it; None leaves it)."""
        with self.session(write=True) as session:
            rows = self._rows(session, run_ids)
            ids = [row.id for row in rows]
            if remove:
                session.execute(delete(Tag).where(Tag.run_id.in_(ids), Tag.tag.in_(remove)))
            present = set(
                session.execute(select(Tag.run_id, Tag.tag).where(Tag.run_id.in_(ids), Tag.tag.in_(add))).all()
            )
            session.add_all(
                Tag(run_id=run_id, tag=tag)
                for run_id in ids
                for tag in dict.fromkeys(add)
                if (run_id, tag) not in present
            )
            if note is not None:
                for row in rows:
                    row.user_note = note or None
            session.flush()
            labels = self._labels(session, ids)
            return [labels[run_id] for run_id in ids]

    def _refuse_running(self, rows: list[Run], action: str) -> None:
        running = [str(row.id) for row in rows if row.status == RunStatus.RUNNING]
        if running:
            raise StoreError(
                f"run {', '.join(running)} is running; a running trial is never {action} (wait for it to end)"
            )

    def delete_runs(self, run_ids: list[int]) -> list[RunRecord]:
        """Soft delete: the runs stay in the store, marked, and are left out of runs, report and plot
        until restored. A deleted run gives up its trial's claim, so `bnrun train` runs the trial
        again. Refuses (and changes nothing) if any of them is running."""
        with self.session(write=True) as session:
            rows = self._rows(session, run_ids)
            self._refuse_running(rows, "deleted")
            now = self.now(session)
            for row in rows:
                if row.deleted_at is None:
                    row.deleted_at, row.claim = now, None
            return [record_from_row(RunRecord, row) for row in rows]

    def restore_runs(self, run_ids: list[int]) -> list[RunRecord]:
        """Undo a soft delete. A restored outcome takes its trial's claim back unless another run
        holds the trial by now (it then stays as history, like a run trained again with --force)."""
        with self.session(write=True) as session:
            rows = self._rows(session, run_ids)
            for row in rows:
                if row.deleted_at is None:
                    continue
                row.deleted_at = None
                if row.status in OUTCOMES and self._claim_holder(session, row.config_key, row.seed) is None:
                    row.claim = 1
                session.flush()
            return [record_from_row(RunRecord, row) for row in rows]

    def purge_runs(self, run_ids: list[int]) -> PurgeRecord:
        """Remove the runs for good, with their epochs, checkpoints, evaluations, diagnostics and
        tags. Refuses (and removes nothing) if any of them is running."""
        with self.session(write=True) as session:
            rows = self._rows(session, run_ids)
            self._refuse_running(rows, "purged")
            ids = [row.id for row in rows]
            counts = {}
            for name, table in (
                ("epochs", Epoch),
                ("checkpoints", Checkpoint),
                ("evaluations", Evaluation),
                ("diagnostics", Diagnostic),
                ("tags", Tag),
            ):
                counts[name] = session.execute(delete(table).where(table.run_id.in_(ids))).rowcount
            session.execute(delete(Run).where(Run.id.in_(ids)))
            return PurgeRecord(run_ids=tuple(ids), **counts)

    def drop_checkpoints(self, run_ids: list[int]) -> int:
        """Remove these runs' stored weights (their rows, epochs and metrics stay), then give the space
        back (SQLite's VACUUM; PostgreSQL's autovacuum does it there); how many checkpoints were removed."""
        with self.session(write=True) as session:
            ids = [row.id for row in self._rows(session, run_ids)]
            removed = session.execute(delete(Checkpoint).where(Checkpoint.run_id.in_(ids))).rowcount
        if removed and self.engine.dialect.name == "sqlite":
            raw = self.engine.raw_connection()  # outside the engine's BEGIN hook: VACUUM runs in no transaction
            try:
                raw.driver_connection.execute("VACUUM")
                raw.driver_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # a WAL store's file shrinks too
            finally:
                raw.close()
        return removed

    def trial_holders(self, config_keys: list[str]) -> list[TrialHolder]:
        """The rows holding trials of these configurations (their outcome or running attempt):
        what a sweep over them would skip."""
        holders: list[TrialHolder] = []
        keys = list(dict.fromkeys(config_keys))
        with self.session() as session:
            for chunk in chunked(keys):
                query = select(Run.config_key, Run.seed, Run.id, Run.status, Run.diagnostics).where(
                    Run.config_key.in_(chunk), Run.claim == 1
                )
                holders.extend(TrialHolder(*row) for row in session.execute(query))
        return holders

    def count_runs(self, criteria: RunCriteria | None = None) -> int:
        """How many runs meet the criteria (None: every row, soft-deleted ones too)."""
        conditions = [] if criteria is None else run_conditions(criteria)
        with self.session() as session:
            return session.execute(select(func.count()).select_from(Run).where(*conditions)).scalar_one()

    # -- pages of runs, checkpoint facts and rows in bulk (the web view, benchmarks) -----------------------

    def page_runs(
        self,
        equal: tuple[tuple[str, tuple], ...] = (),
        impls: tuple[str, ...] = (),
        run_ids: frozenset[int] | None = None,
        since: datetime | None = None,
        tags: tuple[str, ...] = (),
        deleted: bool | None = False,
        sort: str = "id",
        descending: bool = False,
        limit: int = 50,
        offset: int = 0,
    ) -> RunPage:
        """One page of runs, filtered, sorted and cut in the database (LIMIT/OFFSET), with the count of
        matches. `equal`: (column, values) pairs, each kept when the column holds one of its values;
        `impls`: implementation names or labels (custom, custom+fused, torch); `sort`: a PAGE_SORT_FIELDS
        name, missing values last either way, ties by id in the same direction."""
        if sort not in PAGE_SORT_FIELDS:
            raise ValueError(f"cannot sort runs by {sort!r}; choose from {', '.join(PAGE_SORT_FIELDS)}")
        conditions = run_conditions(RunCriteria(equal, impls, run_ids, since, tags, deleted))
        query = select(*RUN_COLUMNS).where(*conditions).order_by(*page_order(sort, descending))
        query = query.limit(limit).offset(offset)
        with self.session() as session:
            total = session.execute(select(func.count()).select_from(Run).where(*conditions)).scalar_one()
            return RunPage(tuple(RunRecord(*row) for row in core_rows(session, query)), total)

    def checkpoint_info(self, run_id: int) -> CheckpointInfo | None:
        """The run's checkpoint digest, size and time (its bytes are not read); None without one."""
        query = select(Checkpoint.run_id, Checkpoint.sha256, Checkpoint.size_bytes, Checkpoint.created_at).where(
            Checkpoint.run_id == run_id
        )
        with self.session() as session:
            row = session.execute(query).first()
        return None if row is None else CheckpointInfo(*row)

    def add_ended_runs(self, runs: list[tuple[dict, list[EpochRecord]]]) -> list[int]:
        """Runs that ended elsewhere, with their epochs, in one transaction and two bulk inserts (a
        benchmark's store, an import): each run's column values (no id) and its epochs. Their new ids."""
        with self.session(write=True) as session:
            ids = list(session.scalars(insert(Run).returning(Run.id, sort_by_parameter_order=True),
                                       [fields for fields, _ in runs]))
            rows = [{"run_id": run_id, **asdict(epoch)} for run_id, (_, epochs) in zip(ids, runs) for epoch in epochs]
            if rows:
                session.execute(insert(Epoch), rows)
            return ids


def id_ranges(run_ids: frozenset[int]) -> list[tuple[int, int]]:
    """{1, 2, 3, 7} -> [(1, 3), (7, 7)]: a set of ids as few inclusive ranges (bounded SQL parameters)."""
    ranges: list[tuple[int, int]] = []
    for run_id in sorted(run_ids):
        if ranges and run_id == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], run_id)
        else:
            ranges.append((run_id, run_id))
    return ranges


def page_order(sort: str, descending: bool) -> tuple:
    """ORDER BY for a page sorted by the column `sort`: missing values last, ties by id in the same direction.
    A column that is never missing is ordered plainly, so that the database can walk an index (id) and stop at
    the page's end instead of sorting every run."""
    column = getattr(Run, sort)
    if sort == "id":
        return (column.desc() if descending else column,)
    if not Run.__table__.c[sort].nullable:
        return (column.desc(), Run.id.desc()) if descending else (column, Run.id)
    # As the CLI's listing: the missing values keep id order even when the others are reversed.
    ties = case((column.is_(None), Run.id), else_=-Run.id) if descending else Run.id
    return (column.is_(None), column.desc() if descending else column, ties)


def core_rows(session: Session, query) -> list:
    """A Core select's rows as plain tuples, fetched at once on the session's connection (past the ORM's
    result machinery, which costs more per row than the database does)."""
    return session.connection().execute(query).all()


def chunked(values: list) -> Iterator[list]:
    """`values` in slices of IN_CHUNK, one IN (...) each."""
    for start in range(0, len(values), IN_CHUNK):
        yield values[start : start + IN_CHUNK]


def run_conditions(criteria: RunCriteria) -> list[ColumnElement[bool]]:
    """The criteria as SQL conditions on runs, all of which must hold."""
    conditions = [one_of(getattr(Run, name), values) for name, values in criteria.equal]
    if criteria.impls:
        conditions.append(impl_condition(criteria.impls))
    if criteria.run_ids is not None:
        conditions.append(or_(false(), *(Run.id.between(low, high) for low, high in id_ranges(criteria.run_ids))))
    if criteria.since is not None:
        conditions.append(Run.started_at >= criteria.since)
    if criteria.deleted is not None:
        conditions.append(Run.deleted_at.is_not(None) if criteria.deleted else Run.deleted_at.is_(None))
    conditions.extend(Run.id.in_(select(Tag.run_id).where(Tag.tag == tag)) for tag in criteria.tags)
    return conditions


def one_of(column, values: tuple) -> ColumnElement[bool]:
    """The column holds one of the values, None matching NULL (as Python's `in`; SQL's IN never matches NULL)."""
    present = column.in_([value for value in values if value is not None])
    return or_(present, column.is_(None)) if None in values else present


def impl_condition(impls: tuple[str, ...]) -> ColumnElement[bool]:
    """The implementation is one of `impls` by name (custom: fused or not) or by label (`impl_label`:
    custom+fused is the custom BN on its fused path)."""
    fused_names = [name for name in BN_IMPLS if impl_label(name, True) in impls]
    return or_(Run.bn_impl.in_(impls), and_(Run.fused.is_(True), Run.bn_impl.in_(fused_names)))
