"""The storage registry (URL scheme -> kind), and what every kind shares: printing a URL with its
password masked, and opening or naming the study behind a `hydra.sweeper.storage` value.

A kind is a StorageKind subclass registered under its URL scheme(s) in STORAGES, in a module of
mmpt/storage/ (the package imports every module there). Optuna is imported inside functions
only: mmpt runs without the sweep extra, and Hydra's start-up must not pay for it.
"""
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mmpt.registry import Registry

STORAGE_KEY = "hydra.sweeper.storage"
STORAGES = Registry("storage", key=STORAGE_KEY)


@dataclass(frozen=True)
class Heartbeat:
    """What the sweeper asks of a storage with a heartbeat of its own (Optuna's RDBStorage)."""
    interval: int                     # seconds between a running trial's heartbeats
    grace_period: int                 # seconds without one after which the trial is stale
    on_stale: Callable | None = None  # called with (study, failed trial) for each stale trial failed


class StorageKind:
    """One kind of Optuna storage, chosen by the scheme of `hydra.sweeper.storage`."""
    example = ""  # the URL form, for messages listing the kinds (e.g. "sqlite:///FILE")

    def open(self, url: str, heartbeat: Heartbeat | None):
        """The Optuna storage; a bad URL or an unreachable one is a one-line ConfigError naming
        STORAGE_KEY (password masked). `heartbeat`: use the storage's own heartbeat if it has one
        (the sweeper keeps its own stamp on the trials of a storage without)."""
        raise NotImplementedError

    def identity(self, url: str, base: Path) -> tuple:
        """What names the study's database, so that two URL forms of one database compare equal
        (relative paths are relative to `base`, the launch directory)."""
        return ("url", url)


def scheme(url: str) -> str:
    """postgresql+psycopg://... -> postgresql (the dialect; a driver may follow a '+')."""
    return url.partition("://")[0].partition(":")[0].partition("+")[0]


def kind_of(url: str) -> StorageKind:
    """The registered kind of a URL's scheme; any other scheme goes to SQLAlchemy (the `database`
    kind), which knows more dialects than are registered and names an unknown one."""
    name = scheme(url)
    return STORAGES[name if name in STORAGES else "database"]()


def examples() -> str:
    """The URL forms of the registered kinds, for messages."""
    return ", ".join(dict.fromkeys(e.obj.example for e in STORAGES.entries() if e.obj.example))


def open_storage(url, heartbeat: Heartbeat | None = None):
    """The Optuna storage behind a `hydra.sweeper.storage` value (None: a new in-memory one)."""
    import optuna

    if url is None:
        return optuna.storages.InMemoryStorage()
    return kind_of(str(url)).open(str(url), heartbeat)


def study_identity(url, study_name, cwd=None) -> tuple:
    """What identifies a study, for comparing two `hydra.sweeper.storage` values: the kind's
    identity of the database (a file's real path, or the server, port, database and user) and
    the study's name."""
    if url is None:
        return ("in memory", study_name, os.getpid())  # gone with its process: never another's
    return (*kind_of(str(url)).identity(str(url), Path(cwd or os.getcwd())), study_name)


def masked(url) -> str:
    """The storage URL with its password replaced by ***, for log lines and error messages.
    Split by hand at the last '@' (not by a URL parser, which splits a password holding '@' or
    '/' in the wrong place and would print the rest of it as the host)."""
    if url is None:
        return "in memory"
    url = str(url)
    name, sep, rest = url.partition("://")
    if not sep or rest.startswith("/"):  # no host part (sqlite:///FILE, journal:///FILE): no password
        return url
    userinfo, at, hostpart = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{name}://{userinfo.split(':', 1)[0]}:***@{hostpart}"


def first_line(e: Exception, url: str) -> str:
    """The first line of an exception's message, the URL's password (if any) masked in it."""
    text = str(getattr(e, "orig", None) or e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    userinfo = str(url).partition("://")[2].rpartition("@")[0]
    password = userinfo.partition(":")[2]
    return line.replace(password, "***") if password else line
