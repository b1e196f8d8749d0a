"""Opening a store: URL resolution, pre-flight checks that never write, the SQLite engine
(WAL, busy timeout, write transactions that begin IMMEDIATE) and serialized migrations."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from bnrun.errors import StoreError, first_line
from bnrun.store import migrate

DEFAULT_DB = "bnrun.db"
BUSY_TIMEOUT_S = 60
CONNECT_TIMEOUT_S = 10
MIGRATION_LOCK_KEY = 0x626E72756E  # "bnrun": the advisory lock that serializes migrations on a server
SQLITE_MAGIC = b"SQLite format 3\x00"
STORE_BACKENDS = ("sqlite", "postgresql")  # what the schema and its migrations are written for


def resolve_url(db: str | None) -> str:
    """`--db` value, else $BNRUN_DB, else ./bnrun.db; a plain path becomes a sqlite URL, and a
    PostgreSQL URL without a driver gets psycopg 3 (the `postgres` extra)."""
    value = db or os.environ.get("BNRUN_DB") or DEFAULT_DB
    for scheme in ("postgresql://", "postgres://"):
        if value.startswith(scheme):
            return "postgresql+psycopg://" + value[len(scheme):]
    if "://" in value:
        return value
    return f"sqlite:///{Path(value).expanduser().resolve()}"


def display_url(url: str) -> str:
    """The URL with any password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL too broken to parse is shown as typed
        return url


def sqlite_path(url: str) -> Path | None:
    """The database file of a sqlite URL, or None for other backends and in-memory stores."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as error:
        raise StoreError(
            f"bad store URL {display_url(url)!r}: {describe(error)}; expected a path or e.g. postgresql://user:password@host/dbname"
        ) from None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def preflight(path: Path) -> None:
    """Refuse, without writing anything, a path that cannot hold a bnrun store."""
    if not path.exists():
        if not path.parent.is_dir():
            raise StoreError(f"cannot create store {path}: directory {path.parent} does not exist")
        if not os.access(path.parent, os.W_OK):
            raise StoreError(f"cannot create store {path}: directory {path.parent} is not writable")
        return
    if path.is_dir():
        raise StoreError(f"store path {path} is a directory; pass a file path with --db")
    if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
        raise StoreError(
            f"store {path} is read-only (file or its directory); copy it somewhere writable or fix its permissions"
        )
    check_sqlite_header(path)


def check_sqlite_header(path: Path) -> None:
    """A non-empty file must start like SQLite and be as long as its header says."""
    size = path.stat().st_size
    if size == 0:
        return
    with path.open("rb") as handle:
        header = handle.read(100)
    if not header.startswith(SQLITE_MAGIC):
        raise StoreError(f"{path} is not a SQLite database; move it away or pass another --db")
    if len(header) < 100:
        raise StoreError(f"{path} is truncated ({size} bytes); restore it from a backup or pass another --db")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    header_size_valid = header[92:96] == header[24:28]
    if header_size_valid and size < pages * page_size:
        raise StoreError(
            f"{path} is truncated ({size} of {pages * page_size} bytes); restore it from a backup or pass another --db"
        )


def make_engine(url: str) -> Engine:
    if make_url(url).get_backend_name() != "sqlite":
        return server_engine(url)
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # transactions are begun by the "begin" hook
        dbapi_connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
        dbapi_connection.execute("PRAGMA foreign_keys = ON")

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:
        immediate = connection.get_execution_options().get("immediate", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def server_engine(url: str) -> Engine:
    """A database server's engine for one of many worker processes: a small pool (each trial
    needs one connection, the heartbeat thread a second), connections checked before use (a
    server restart or an idle timeout must not fail a trial), and a fresh pool in a forked child
    (a connection must never be shared between processes)."""
    engine = create_engine(
        url,
        pool_size=2,
        max_overflow=2,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
    )
    os.register_at_fork(after_in_child=lambda: engine.dispose(close=False))
    return engine


@contextlib.contextmanager
def server_migration_lock(engine: Engine) -> Iterator[None]:
    """A PostgreSQL advisory lock held while migrating, so concurrent first starts migrate once."""
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
            connection.commit()


@contextlib.contextmanager
def migration_lock(engine: Engine, path: Path | None) -> Iterator[None]:
    if engine.dialect.name == "postgresql":
        with server_migration_lock(engine):
            yield
        return
    with file_lock(path):
        yield


@contextlib.contextmanager
def file_lock(path: Path | None) -> Iterator[None]:
    """An exclusive lock on `<db>.lock`, so concurrent first starts migrate exactly once. The holder
    removes the file before letting go, so none outlives its command; a waiter that then gets the lock
    on the removed file sees that the path no longer names it and locks the path anew."""
    if path is None:
        yield
        return
    lock = Path(f"{path}.lock")
    while True:
        handle = open(lock, "a")
        fcntl.flock(handle, fcntl.LOCK_EX)
        if same_file(lock, handle):
            break
        handle.close()
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def same_file(path: Path, handle) -> bool:
    """Whether `path` still names the open file `handle` (another holder may have removed it)."""
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


@dataclass(frozen=True)
class Migration:
    """What opening the store changed: from which revision (None: a new store), and the backup."""

    from_revision: str | None
    to_revision: str
    backup: Path | None

    def describe(self, name: str) -> str:
        if self.from_revision is None:
            return f"created store {name} (schema {self.to_revision})"
        return f"upgraded store {name} from schema {self.from_revision} to {self.to_revision} (backup: {self.backup})"


def ensure_schema(engine: Engine, path: Path | None) -> Migration | None:
    """Bring the store to the head revision (backing up an older file first); None if current."""
    head = migrate.head_revision()
    with migration_lock(engine, path):
        with engine.connect() as connection:
            current = migrate.current_revision(connection)
            if current == head:
                return None
            refuse_unknown(connection, current, path)
            connection.commit()
            if path is not None:
                # Outside any transaction: SQLite cannot switch journal mode inside one.
                connection.connection.dbapi_connection.execute("PRAGMA journal_mode = WAL")
        saved = backup(path, current) if path is not None and current is not None else None
        with engine.connect().execution_options(immediate=True) as connection:
            migrate.upgrade(connection)
            connection.commit()
        return Migration(current, head, saved)


def refuse_unknown(connection, current: str | None, path: Path | None) -> None:
    name = path or "the store"
    if current is not None and current not in migrate.known_revisions():
        raise StoreError(
            f"{name} was written by a newer bnrun (schema revision {current}); upgrade bnrun or pass another --db"
        )
    if current is None:
        tables = set(inspect(connection).get_table_names())
        if tables:
            raise StoreError(
                f"{name} is a SQLite database but not a bnrun store (tables: "
                f"{', '.join(sorted(tables))[:120]}); pass another --db"
            )


def backup(path: Path, revision: str) -> Path:
    """A consistent copy beside the store, named with its revision, before it is upgraded."""
    target = path.with_name(f"{path.name}.bak-{revision}")
    copy_sqlite(sqlite3.connect(path), target)
    return target


def copy_sqlite(source: sqlite3.Connection, target: Path) -> None:
    """SQLite's online backup of `source` into the file `target`; closes both connections."""
    try:
        with sqlite3.connect(target) as copy:
            source.backup(copy)
        copy.close()
    finally:
        source.close()


def open_engine(url: str, create: bool = True) -> tuple[Engine, Migration | None]:
    """Check, connect and migrate; every failure becomes one StoreError line. Without `create` a SQLite
    file that does not exist is refused (nothing is created)."""
    path = sqlite_path(url)
    if path is not None:
        if not create:
            require_store_file(path, "only bnrun train creates one")
        preflight(path)
    engine = checked_engine(url)
    try:
        migration = ensure_schema(engine, path)
    except StoreError:
        engine.dispose()
        raise
    except (SQLAlchemyError, sqlite3.Error) as error:
        engine.dispose()
        raise StoreError(f"cannot open store {path or display_url(url)}: {describe(error)}{hint(error)}") from None
    return engine, migration


def checked_engine(url: str) -> Engine:
    """The engine, with a bad URL, a database bnrun does not store in, or a missing driver said in one line."""
    try:
        backend = make_url(url).get_backend_name()
        if backend not in STORE_BACKENDS:
            raise StoreError(f"cannot store in {backend} ({display_url(url)}): bnrun stores in SQLite (a path) or "
                             "PostgreSQL (postgresql://user:password@host/dbname)")
        return make_engine(url)
    except NoSuchModuleError:
        raise StoreError(
            f"no database driver for {display_url(url)}; for PostgreSQL: pip install 'bnrun[postgres]' (psycopg 3)"
        ) from None
    except ImportError as error:
        raise StoreError(
            f"the database driver for {display_url(url)} is missing ({error.name or error}); for PostgreSQL: "
            "pip install 'bnrun[postgres]'"
        ) from None
    except ArgumentError as error:
        raise StoreError(
            f"bad store URL {display_url(url)!r}: {describe(error)}; expected a path or e.g. postgresql://user:password@host/dbname"
        ) from None


def hint(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error)
    if "password authentication failed" in text or "no password supplied" in text:
        return " (check the user and password in the URL)"
    if "Connection refused" in text or "could not translate host name" in text or "timeout expired" in text:
        return " (is the server running and reachable at that host and port?)"
    if "does not exist" in text:
        return " (create it first, e.g. createdb NAME)"
    return ""


def require_store_file(path: Path, why: str) -> None:
    if not path.is_file():
        raise StoreError(
            f"no store at {path}{' (a directory)' if path.is_dir() else ''}; check --db or BNRUN_DB ({why})"
        )


def read_only_sqlite_url(path: Path) -> str:
    """A URL that opens the file without ever writing: mode=ro, and immutable=1 when no writer has
    a write-ahead log open (otherwise even a read-only connection creates -wal and -shm files)."""
    wal = Path(f"{path}-wal")
    flags = "mode=ro" + ("" if wal.exists() else "&immutable=1")
    return f"sqlite:///file:{path}?{flags}&uri=true"


def open_read_only(url: str) -> tuple[Engine, Path | None]:
    """An engine that only reads a store at the head revision. An older SQLite store is read
    through a migrated temporary copy (returned, for the caller to delete); nothing is created."""
    path = sqlite_path(url)
    if path is not None:
        require_store_file(path, "read-only commands never create one")
        check_sqlite_header(path)
        url = read_only_sqlite_url(path)
    engine = checked_engine(url)
    try:
        with engine.connect() as connection:
            current = migrate.current_revision(connection)
            if current != migrate.head_revision():
                refuse_unknown(connection, current, path)
    except (SQLAlchemyError, sqlite3.Error) as error:
        engine.dispose()
        raise StoreError(f"cannot read store {path or display_url(url)}: {describe(error)}{hint(error)}") from None
    except StoreError:
        engine.dispose()
        raise
    if current == migrate.head_revision():
        return engine, None
    engine.dispose()
    if path is None:
        raise StoreError(
            f"store {display_url(url)} is at schema {current}, older than this bnrun's "
            f"{migrate.head_revision()}; open it once with a writing command (bnrun train or eval) to upgrade it"
        )
    return migrated_copy(path, current)


def migrated_copy(path: Path, revision: str | None) -> tuple[Engine, Path]:
    """A temporary copy of an older store, brought to the head revision (the original is only read)."""
    import tempfile

    handle, name = tempfile.mkstemp(prefix="bnrun-readonly-", suffix=".db")
    os.close(handle)
    copy = Path(name)
    copy_sqlite(sqlite3.connect(f"file:{path}?{read_only_sqlite_url(path).split('?', 1)[1]}", uri=True), copy)
    engine = make_engine(f"sqlite:///{copy}")
    with engine.connect().execution_options(immediate=True) as connection:
        migrate.upgrade(connection)
        connection.commit()
    return engine, copy


def describe(error: BaseException) -> str:
    original = getattr(error, "orig", None) or error
    text = first_line(original, 200)
    if "disk I/O error" in text or "disk is full" in text:
        text += " (check free disk space and file size limits; the failed write was rolled back)"
    return text
