"""Database storages: Optuna's RDBStorage on any SQLAlchemy URL (postgresql://, mysql+pymysql://,
...). Their heartbeat is Optuna's own (a heartbeat table in the database, `fail_stale_trials`)."""
import random
import time
from pathlib import Path

from mmpt.errors import ConfigError
from mmpt.storage.base import (STORAGE_KEY, STORAGES, Heartbeat, StorageKind, examples, first_line, masked,
                               scheme)

CONNECT_TIMEOUT_S = 10  # a database server that does not answer is an error, not a hang
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306}


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
                          f"one of null (in memory), {examples()}") from None
    except Exception:  # any parse error: its message may quote the password, so none of it is shown
        raise ConfigError(STORAGE_KEY, f"{masked(url)!r} is not a storage: expected null (in memory), "
                          f"{examples()} (a password with @ : / percent-encoded, or in PGPASSWORD)") from None
    return parsed


@STORAGES.register("postgresql")
@STORAGES.register("mysql")
@STORAGES.register("mariadb")
@STORAGES.register("database")  # any other SQLAlchemy dialect (and the place an unknown scheme is named)
class Database(StorageKind):
    example = "postgresql://USER@HOST/DB, mysql+pymysql://USER@HOST/DB"
    what_fails = "cannot be reached"

    def connect_args(self, url: str) -> dict:
        """The driver's connect arguments: a timeout where the driver is known to take one."""
        return {"connect_timeout": CONNECT_TIMEOUT_S} if scheme(url) in DEFAULT_PORTS else {}

    def open(self, url: str, heartbeat: Heartbeat | None):
        parse_url(url)
        try:
            return self.rdb_storage(url, heartbeat)
        except ImportError as e:
            raise ConfigError(STORAGE_KEY, f"no database driver for {masked(url)} ({e}); PostgreSQL's "
                              "(psycopg, for postgresql://) comes with mmpt's sweep extra, others are installed "
                              "apart (e.g. pip install pymysql for mysql+pymysql://)") from None
        except ConfigError:
            raise
        except Exception as e:  # sqlalchemy's OperationalError and the like: the server is not there
            raise ConfigError(STORAGE_KEY, f"{masked(url)} {self.what_fails}: {first_line(e, url)}") from None

    def rdb_storage(self, url: str, heartbeat: Heartbeat | None):
        """RDBStorage(url). Workers that start together on a new database race to create its tables:
        the losers see "table ... already exists" or a duplicate schema-version row, and try again."""
        import optuna
        import sqlalchemy

        beat = {} if heartbeat is None else dict(heartbeat_interval=heartbeat.interval, grace_period=heartbeat.grace_period,
                                                 heartbeat_stale_trial_callback=heartbeat.on_stale)
        for attempt in range(4):
            try:
                return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": self.connect_args(url)}, **beat)
            except sqlalchemy.exc.DatabaseError as e:
                raced = isinstance(e, sqlalchemy.exc.IntegrityError) or "already exists" in str(e)
                if not raced or attempt == 3:
                    raise
                time.sleep(0.5 + random.random())

    def identity(self, url: str, base: Path) -> tuple:
        """The server, port, database and user (the password may be in the URL or in PGPASSWORD)."""
        try:
            parsed = parse_url(url)
        except ConfigError:
            return ("url", url)
        backend = parsed.get_backend_name()
        return (backend, parsed.host, parsed.port or DEFAULT_PORTS.get(backend), parsed.database, parsed.username)
