"""Journal files (journal:///FILE, journal:////abs/path): Optuna's JournalStorage on a file, for
clusters with a shared filesystem and no database server. Optuna gives a journal no heartbeat (as
of Optuna 5.1), so the sweeper keeps its own stamp on running trials there (hydra_plugins/mmpt_optuna_sweeper/_study.py).

A worker killed while appending leaves its last record cut mid-line; this kind drops such a record
before anyone writes after it, and refuses a journal with a broken record before its end."""
import functools
import json
import logging
import os
from pathlib import Path

from mmpt.errors import ConfigError
from mmpt.storage.base import STORAGE_KEY, STORAGES, Heartbeat, StorageKind

log = logging.getLogger(__name__)


def journal_path(url: str) -> Path:
    """journal:///PATH -> PATH; slashes as in SQLite URLs (journal:////abs/path is absolute)."""
    if not url.startswith("journal:///"):
        raise ConfigError(STORAGE_KEY, f"{url!r}: a journal file is journal:///RELATIVE/PATH or "
                          "journal:////ABSOLUTE/PATH (three slashes, then the path)")
    return Path(url[len("journal:///"):])


@STORAGES.register("journal")
class Journal(StorageKind):
    example = "journal:///FILE"

    def open(self, url: str, heartbeat: Heartbeat | None):
        import optuna

        path = journal_path(url)
        if not path.parent.is_dir():
            raise ConfigError(STORAGE_KEY, f"the journal file's directory {path.parent.resolve()} does not exist")
        repair_journal(path, check=True)
        return optuna.storages.JournalStorage(_whole_line_backend()(str(path)))

    def identity(self, url: str, base: Path) -> tuple:
        return ("journal", os.path.realpath(base / journal_path(url)))


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
