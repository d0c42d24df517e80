"""A hyperparameter-search trial as its job sees it, and the Optuna storages both sides open.

mmpt's sweeper (hydra_plugins/mmpt_optuna_sweeper) gives every job its trial through the job's
overrides (`+hydra.sweeper.trial=<number>`, and the study's name), because jobs may run in other
processes or on other machines. The job opens the study's storage (`hydra.sweeper.storage`, the
same URL the sweeper opened), reports the optimized val metric to its trial after every
evaluation, and stops when the sweep's pruner (`hydra.sweeper.pruner`) says so. The sweeper then
marks the trial PRUNED: the job only returns `Pruned(step, value)` instead of its value.

A `mean_over_seeds` trial reports once per finished seed instead: at step k (1, 2, ...) the mean of
its first k seeds, so a bad trial is pruned before its remaining seeds run.

Optuna is imported inside functions only: mmpt runs without the sweep extra.
"""
import functools
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

from mmpt.engine import distributed
from mmpt.errors import ConfigError

log = logging.getLogger(__name__)

STORAGE_KEY = "hydra.sweeper.storage"
CONNECT_TIMEOUT_S = 10  # a database server that does not answer is an error, not a hang
SQLITE_BUSY_S = 60      # how long a SQLite write waits for another process's write

# In-memory studies by name: the basic launcher runs jobs in the sweeper's own process, the only
# place an in-memory study can be reached from. The sweeper registers its study here.
IN_PROCESS: dict = {}


@dataclass(frozen=True)
class Pruned:
    """What a pruned trial's job returns to the sweeper instead of its value."""
    step: int                   # the step of the report that was pruned
    value: float | None = None  # the optimized metric of the best evaluation before it


def masked(url) -> str:
    """The storage URL with its password replaced by ***, for log lines and error messages."""
    if url is None:
        return "in memory"
    url = str(url)
    if url.startswith("journal:"):
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: show none of what follows the scheme
        return url.split("://", 1)[0] + "://***"


def journal_path(url: str) -> Path:
    """journal:///PATH -> PATH; slashes as in SQLite URLs (journal:////abs/path is absolute)."""
    if not url.startswith("journal:///"):
        raise ConfigError(STORAGE_KEY, f"{url!r}: a journal file is journal:///RELATIVE/PATH or "
                          "journal:////ABSOLUTE/PATH (three slashes, then the path)")
    return Path(url[len("journal:///"):])


def open_storage(url):
    """The Optuna storage behind a `hydra.sweeper.storage` value (None: a new in-memory one).

    Accepted: null (in memory), sqlite:///FILE, journal:///FILE (Optuna's JournalStorage on a
    file: clusters with a shared filesystem and no database server) and any SQLAlchemy URL
    (postgresql://, mysql+pymysql://, ...). A server that does not answer within
    CONNECT_TIMEOUT_S, a missing directory or a missing driver is a ConfigError naming the key,
    with the password masked.
    """
    import optuna

    if url is None:
        return optuna.storages.InMemoryStorage()
    url = str(url)
    if url.startswith("journal:"):
        path = journal_path(url)
        if not path.parent.is_dir():
            raise ConfigError(STORAGE_KEY, f"the journal file's directory {path.parent.resolve()} does not exist")
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    import sqlalchemy
    from sqlalchemy.engine import make_url

    try:
        backend = make_url(url).get_backend_name()
    except sqlalchemy.exc.ArgumentError:
        raise ConfigError(STORAGE_KEY, f"{masked(url)!r} is not a storage: expected null (in memory), "
                          "sqlite:///FILE, journal:///FILE or a database URL (postgresql://USER@HOST/DB)") from None
    if backend == "sqlite":
        database = make_url(url).database
        if database and database != ":memory:" and not Path(database).resolve().parent.is_dir():
            raise ConfigError(STORAGE_KEY, f"the SQLite file's directory {Path(database).resolve().parent} "
                              "does not exist")
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
        raise ConfigError(STORAGE_KEY, f"{masked(url)} cannot be reached: {_first_line(e, url)}") from None
    if backend == "sqlite":
        # Optuna reads a trial, then writes it (popping a queued grid point, failing a stale trial).
        # Two deferred SQLite transactions doing that at once deadlock and one fails with
        # "database is locked"; BEGIN IMMEDIATE takes the write lock first, so workers queue.
        sqlalchemy.event.listen(storage.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    return storage


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


def _first_line(e: Exception, url: str) -> str:
    text = str(getattr(e, "orig", None) or e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    try:
        from sqlalchemy.engine import make_url

        password = make_url(url).password
    except Exception:
        password = None
    return line.replace(password, "***") if password else line


class TrialReporter:
    """The job's handle on its trial: report(step, value) records the value and says whether to stop."""

    def __init__(self, study, number: int):
        import optuna

        self.study, self.number = study, number
        trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
        self.trial = optuna.Trial(study, trial_id)
        self.failed = False

    def report(self, step: int, value: float) -> bool:
        """Record `value` at `step`; True when the pruner stops the trial here."""
        if self.failed or value is None or not math.isfinite(float(value)):
            return False
        try:
            self.trial.report(float(value), step)
            prune = self.trial.should_prune()
        except Exception as e:  # the storage went away, or the trial was failed as stale: train on
            log.warning("trial %d: reporting to the study failed (%s); the trial goes on unpruned",
                        self.number, _first_line(e, ""))
            self.failed = True
            return False
        if prune:
            log.info("trial %d pruned at step %d (%s)", self.number, step, type(self.study.pruner).__name__)
        return prune


def current() -> TrialReporter | None:
    """This job's trial, when it is a trial of mmpt's sweeper whose study it can reach."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    sweeper = HydraConfig.get().sweeper
    number = OmegaConf.select(sweeper, "trial", default=None)
    if number is None:
        return None
    return _reporter(sweeper.study_name, OmegaConf.select(sweeper, "storage", default=None), int(number),
                     OmegaConf.to_yaml(sweeper.get("pruner") or {}))


@functools.lru_cache(maxsize=4)
def _reporter(study_name: str, url, number: int, pruner_yaml: str) -> TrialReporter | None:
    import optuna
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    storage = IN_PROCESS.get(study_name) if url is None else open_storage(url)
    if storage is None:
        return None  # an in-memory study in another process (the sweeper refuses that with a pruner)
    pruner = OmegaConf.create(pruner_yaml)
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=optuna.samplers.RandomSampler(),
                              pruner=instantiate(pruner) if pruner.get("_target_") else None)
    return TrialReporter(study, number)


def _is_trial_run(run_dir) -> bool:
    """Whether run_dir is the job's own run dir: the seed runs of mean_over_seeds (seed_<s>/) are
    parts of a trial, reported by their parent after each seed rather than at each evaluation."""
    from hydra.core.hydra_config import HydraConfig

    return Path(run_dir).resolve() == Path(HydraConfig.get().runtime.output_dir).resolve()


def eval_callback(cfg, main_key: str, run_dir):
    """The Trainer's on_eval for this run: report the optimized val metric to the trial at each
    evaluation, True to stop; None outside a trial."""
    # under torchrun rank 0 reports and decides (the Trainer hands its answer to every rank); the
    # others need a hook all the same, so that every rank takes part in that hand-over
    reporter = current() if distributed.is_main() else None
    if not distributed.broadcast_object(reporter is not None and _is_trial_run(run_dir)):
        return None
    if reporter is None:
        return lambda step, metrics: False
    key = cfg.get("optimized_metric") or main_key

    def on_eval(step: int, metrics: dict) -> bool:
        return key in metrics and reporter.report(step, metrics[key])

    return on_eval


def report_seeds(runs: list[dict], key: str) -> bool:
    """After each seed of a mean_over_seeds trial: report the mean of the finished seeds at step
    len(runs); True to stop before the next seed."""
    reporter = current() if distributed.is_main() else None  # torchrun: rank 0 decides for all
    values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
    stop = reporter is not None and len(values) == len(runs) and reporter.report(len(runs), sum(values) / len(values))
    return bool(distributed.broadcast_object(stop))


def outcome(metrics: dict, key: str):
    """What the job returns to the sweeper: the optimized metric, or Pruned for a pruned trial."""
    if metrics.get("pruned"):
        return Pruned(step=int(metrics["pruned_step"]), value=metrics.get(key))
    return metrics[key]
