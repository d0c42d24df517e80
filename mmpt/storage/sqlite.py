"""SQLite files (sqlite:///FILE, sqlite:////abs/path): a database on one machine, RDBStorage with
Optuna's heartbeat like any database, plus the file checks and the write lock SQLite needs."""
import os
from pathlib import Path

from mmpt.errors import ConfigError
from mmpt.storage.base import STORAGE_KEY, STORAGES, Heartbeat
from mmpt.storage.database import Database, parse_url

SQLITE_BUSY_S = 60  # how long a SQLite write waits for another process's write
SQLITE_MAGIC = b"SQLite format 3\x00"


@STORAGES.register("sqlite")
class SQLite(Database):
    example = "sqlite:///FILE"
    what_fails = "cannot be opened"

    def connect_args(self, url: str) -> dict:
        # sqlite3 in autocommit mode, so that the listener below decides how transactions begin
        return {"timeout": SQLITE_BUSY_S, "isolation_level": None}

    def open(self, url: str, heartbeat: Heartbeat | None):
        import sqlalchemy

        database = parse_url(url).database
        if database and database != ":memory:":
            check_file(Path(database))
        storage = super().open(url, heartbeat)
        # Optuna reads a trial, then writes it (popping a queued grid point, failing a stale trial).
        # Two deferred SQLite transactions doing that at once deadlock and one fails with
        # "database is locked"; BEGIN IMMEDIATE takes the write lock first, so workers queue.
        sqlalchemy.event.listen(storage.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        return storage

    def identity(self, url: str, base: Path) -> tuple:
        """The file's real path: a relative and an absolute path to one file are one database."""
        try:
            database = parse_url(url).database
        except ConfigError:
            return ("url", url)
        return ("sqlite", os.path.realpath(base / database) if database else None)


def check_file(path: Path) -> None:
    if not path.resolve().parent.is_dir():
        raise ConfigError(STORAGE_KEY, f"the SQLite file's directory {path.resolve().parent} does not exist")
    if path.is_file() and path.stat().st_size > 0:
        with path.open("rb") as f:
            head = f.read(len(SQLITE_MAGIC))
        if head != SQLITE_MAGIC:
            raise ConfigError(STORAGE_KEY, f"{path} is not a database (an SQLite file starts with "
                              f"'SQLite format 3'; it starts with {head[:15]!r})")
