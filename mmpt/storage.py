"""Optuna storages behind `hydra.sweeper.storage`: opening them, printing their URLs with the
password masked, telling which study a URL names, and keeping journal files whole.

Both sides of a sweep use this: the sweeper (hydra_plugins/mmpt_optuna_sweeper) and each job
(mmpt/trial.py). Optuna and SQLAlchemy are imported inside functions only: mmpt runs without the
sweep extra, and Hydra's start-up must not pay for them.
"""
import functools
import json
import logging
import os
import random
import time
from pathlib import Path

from mmpt.errors import ConfigError

log = logging.getLogger(__name__)

STORAGE_KEY = "hydra.sweeper.storage"
CONNECT_TIMEOUT_S = 10  # a database server that does not answer is an error, not a hang
SQLITE_BUSY_S = 60      # how long a SQLite write waits for another process's write
SCHEMES = "sqlite:///FILE, journal:///FILE, postgresql://USER@HOST/DB, mysql+pymysql://USER@HOST/DB"
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306}
SQLITE_MAGIC = b"SQLite format 3\x00"


def masked(url) -> str:
    """The storage URL with its password replaced by ***, for log lines and error messages.
    Split by hand at the last '@' (not by a URL parser, which splits a password holding '@' or
    '/' in the wrong place and would print the rest of it as the host)."""
    if url is None:
        return "in memory"
    url = str(url)
    scheme, sep, rest = url.partition("://")
    if not sep or scheme in ("sqlite", "journal"):
        return url
    userinfo, at, hostpart = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{hostpart}"


def journal_path(url: str) -> Path:
    """journal:///PATH -> PATH; slashes as in SQLite URLs (journal:////abs/path is absolute)."""
    if not url.startswith("journal:///"):
        raise ConfigError(STORAGE_KEY, f"{url!r}: a journal file is journal:///RELATIVE/PATH or "
                          "journal:////ABSOLUTE/PATH (three slashes, then the path)")
    return Path(url[len("journal:///"):])


def parse_url(url: str):
    """SQLAlchemy's URL object of a database storage URL, or a one-line ConfigError (password masked)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import NoSuchModuleError

    scheme = url.partition("://")[0]
    userinfo = url.partition("://")[2].rpartition("@")[0]
    if "@" in userinfo or "/" in userinfo:
        raise ConfigError(STORAGE_KEY, f"{masked(url)}: the password holds '@' or '/', which end a URL's "
                          "user part: percent-encode it (@ = %40, : = %3A, / = %2F) or, better, leave it out "
                          "of the URL (PGPASSWORD=... or ~/.pgpass)")
    try:
        parsed = make_url(url)
        parsed.get_dialect()
    except NoSuchModuleError:
        hint = " (PostgreSQL's is postgresql://)" if scheme == "postgres" else ""
        raise ConfigError(STORAGE_KEY, f"{masked(url)}: unknown scheme {scheme + '://'!r}{hint}, expected "
                          f"one of null (in memory), {SCHEMES}") from None
    except Exception:  # any parse error: its message may quote the password, so none of it is shown
        raise ConfigError(STORAGE_KEY, f"{masked(url)!r} is not a storage: expected null (in memory), "
                          f"{SCHEMES} (a password with @ : / percent-encoded, or in PGPASSWORD)") from None
    return parsed


def study_identity(url, study_name, cwd=None) -> tuple:
    """What identifies a study, for comparing two `hydra.sweeper.storage` values: the file's real
    path (SQLite, journal; relative paths are relative to `cwd`, the launch directory), or the
    server, port, database and user (the password may be in the URL or in PGPASSWORD)."""
    if url is None:
        return ("in memory", study_name, os.getpid())  # gone with its process: never another's
    url, base = str(url), Path(cwd or os.getcwd())
    if url.startswith("journal:"):
        return ("journal", os.path.realpath(base / journal_path(url)), study_name)
    try:
        parsed = parse_url(url)
    except ConfigError:
        return ("url", url, study_name)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return ("sqlite", os.path.realpath(base / parsed.database) if parsed.database else None, study_name)
    return (backend, parsed.host, parsed.port or DEFAULT_PORTS.get(backend), parsed.database,
            parsed.username, study_name)


def open_storage(url):
    """The Optuna storage behind a `hydra.sweeper.storage` value (None: a new in-memory one).

    Accepted: null (in memory), sqlite:///FILE, journal:///FILE (Optuna's JournalStorage on a
    file: clusters with a shared filesystem and no database server) and any SQLAlchemy URL
    (postgresql://, mysql+pymysql://, ...). A bad URL, an unknown scheme, a file that is no
    database, a server that does not answer within CONNECT_TIMEOUT_S, a missing directory or a
    missing driver is a one-line ConfigError naming the key, with the password masked.
    """
    import optuna

    if url is None:
        return optuna.storages.InMemoryStorage()
    url = str(url)
    if url.startswith("journal:"):
        return _journal(journal_path(url))
    parsed = parse_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            _check_sqlite_file(Path(database))
        # sqlite3 in autocommit mode, so that the listener below decides how transactions begin
        connect_args = {"timeout": SQLITE_BUSY_S, "isolation_level": None}
    elif backend in ("postgresql", "mysql", "mariadb"):
        connect_args = {"connect_timeout": CONNECT_TIMEOUT_S}
    else:
        connect_args = {}
    try:
        storage = _rdb_storage(url, connect_args)
    except ImportError as e:
        raise ConfigError(STORAGE_KEY, f"no database driver for {masked(url)} ({e}); PostgreSQL's "
                          "(psycopg, for postgresql://) comes with mmpt's sweep extra, others are installed "
                          "apart (e.g. pip install pymysql for mysql+pymysql://)") from None
    except Exception as e:  # sqlalchemy's OperationalError and the like: the server is not there
        what = "cannot be opened" if backend == "sqlite" else "cannot be reached"
        raise ConfigError(STORAGE_KEY, f"{masked(url)} {what}: {first_line(e, url)}") from None
    if backend == "sqlite":
        import sqlalchemy

        # Optuna reads a trial, then writes it (popping a queued grid point, failing a stale trial).
        # Two deferred SQLite transactions doing that at once deadlock and one fails with
        # "database is locked"; BEGIN IMMEDIATE takes the write lock first, so workers queue.
        sqlalchemy.event.listen(storage.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    return storage


def _check_sqlite_file(path: Path) -> None:
    if not path.resolve().parent.is_dir():
        raise ConfigError(STORAGE_KEY, f"the SQLite file's directory {path.resolve().parent} does not exist")
    if path.is_file() and path.stat().st_size > 0:
        with path.open("rb") as f:
            head = f.read(len(SQLITE_MAGIC))
        if head != SQLITE_MAGIC:
            raise ConfigError(STORAGE_KEY, f"{path} is not a database (an SQLite file starts with "
                              f"'SQLite format 3'; it starts with {head[:15]!r})")


def _rdb_storage(url: str, connect_args: dict):
    """RDBStorage(url). Workers that start together on a new database race to create its tables:
    the losers see "table ... already exists" or a duplicate schema-version row, and try again."""
    import optuna
    import sqlalchemy

    for attempt in range(4):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": connect_args})
        except sqlalchemy.exc.DatabaseError as e:
            raced = isinstance(e, sqlalchemy.exc.IntegrityError) or "already exists" in str(e)
            if not raced or attempt == 3:
                raise
            time.sleep(0.5 + random.random())


def first_line(e: Exception, url: str) -> str:
    """The first line of an exception's message, the URL's password (if any) masked in it."""
    text = str(getattr(e, "orig", None) or e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    userinfo = str(url).partition("://")[2].rpartition("@")[0]
    password = userinfo.partition(":")[2]
    return line.replace(password, "***") if password else line


# ---- journal files ---------------------------------------------------------------------------
def _journal(path: Path):
    import optuna

    if not path.parent.is_dir():
        raise ConfigError(STORAGE_KEY, f"the journal file's directory {path.parent.resolve()} does not exist")
    repair_journal(path, check=True)
    return optuna.storages.JournalStorage(_whole_line_backend()(str(path)))


@functools.cache
def _whole_line_backend():
    from optuna.storages.journal import JournalFileBackend

    class WholeLineJournalFileBackend(JournalFileBackend):
        """Optuna's journal file that never writes after a partial line.

        A worker killed while appending leaves its last record cut mid-line; Optuna's next append
        would glue a record to it, and every reader after that fails on the glued line. So each
        append first drops a cut last record: the killed worker's operation never happened, as
        for the readers, which skip a last line without its newline."""

        def append_logs(self, logs) -> None:
            repair_journal(Path(self._file_path))
            super().append_logs(logs)

    return WholeLineJournalFileBackend


def repair_journal(path: Path, check: bool = False) -> None:
    """Drop a cut last record of a journal file (a warning says so); with `check`, refuse a journal
    with a broken record before its end in one line naming the file and line. Under the journal's
    own lock, so never while a live worker writes."""
    from optuna.storages.journal import JournalFileSymlinkLock

    if not path.is_file() or path.stat().st_size == 0:
        return
    if not check:  # the common case, at every append: one byte read
        with path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        data = path.read_bytes()
        cut = data.rfind(b"\n") + 1
        if cut < len(data):
            with path.open("r+b") as f:
                f.truncate(cut)
            log.warning("journal %s: its last record (line %d) was cut mid-write (a killed worker?); dropped it",
                        path, data[:cut].count(b"\n") + 1)
        if check:
            for number, line in enumerate(data[:cut].split(b"\n")[:-1], start=1):
                try:
                    json.loads(line)
                except ValueError:
                    raise ConfigError(STORAGE_KEY, f"{path}:{number}: not a journal record (a worker appended "
                                      "after a cut record?): remove that line, or start a new journal") from None
    finally:
        lock.release()
