"""A worker's study: opening it, the trial-folder guard, queueing a grid, numbering trials, and
heartbeats. Every use of Optuna's private API in the sweeper is here (the study's storage and id,
a trial's id), so an Optuna upgrade that moves them breaks this file only.

A study is named by its storage and study_name. Two storage values name the same study when they
resolve to the same database (mmpt.storage.study_identity): a relative or an absolute SQLite path
to one file, a PostgreSQL URL with the password in it or in PGPASSWORD.
"""
import contextlib
import json
import logging
import threading
import time
from pathlib import Path

import optuna
import yaml
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from mmpt.errors import ConfigError
from mmpt.storage import Heartbeat, masked, open_storage, study_identity

log = logging.getLogger(__name__)

GRID = "mmpt:grid"                 # study system attr: the grid points queued in the study (JSON)
OVER_CAP = "mmpt:over_max_trials"  # trial system attr: asked past max_trials by a racing worker, not run
STAMP = "mmpt:heartbeat"           # trial system attr: a journal trial's last heartbeat (see Heartbeats)
OPTUNA_BEATS = "mmpt:optuna_heartbeat"  # trial system attr: the trial has Optuna's heartbeat (a database)
GRID_WAIT_S = 60                   # how long a worker waits for the creator to queue a new grid


def open_study(settings, **kwargs):
    """(the study, whether this worker created it, its Heartbeats): several workers may race to
    create it. load_if_exists: true resumes or creates, "only" resumes (a missing study is
    refused: a misspelled study_name), false creates (an existing study is refused)."""
    url, study_name, directions = settings.storage, settings.study_name, settings.directions
    beats = Heartbeats(url, settings.heartbeat.interval, settings.grace, settings.heartbeat.max_retry)
    storage = open_storage(url, beats.for_storage())
    others = sorted(s.study_name for s in storage.get_all_studies())
    where = masked(url)
    if settings.load_if_exists == "only" and study_name not in others:
        raise ConfigError("hydra.sweeper.study_name", f"no study {study_name!r} in {where} (load_if_exists=only "
                          f"resumes a study, never creates one); it holds: {', '.join(others) or 'no study'}")
    if settings.load_if_exists is False and study_name in others:
        raise ConfigError("hydra.sweeper.study_name", f"study {study_name!r} is already in {where} "
                          "(load_if_exists=false creates a new study): choose another name")
    kwargs.update(study_name=study_name, storage=storage)
    study, created = None, False
    if study_name is not None:
        with contextlib.suppress(KeyError):
            study = optuna.load_study(**kwargs)
    if study is None:
        try:
            study, created = optuna.create_study(directions=directions, **kwargs), True
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(**kwargs)
    if created and others:
        log.warning("NEW STUDY %s in %s, which holds %d other(s): %s (resume one with its study_name; "
                    "hydra.sweeper.load_if_exists=only refuses to create a study)", study.study_name, where,
                    len(others), ", ".join(others[:10]))
    elif created:
        log.info("new study %s in %s", study.study_name, where)
    have = [d.name.lower() for d in study.directions]
    if have != directions:
        raise ConfigError("hydra.sweeper.direction", f"study {study.study_name} in {where} is {have}, not {directions}")
    return study, created, beats


def refuse_foreign_folders(config, sweep_dir: Path, url, study_name) -> None:
    """Stop before a trial would write into a folder of another study (numbered trial folders).
    A folder's study is read from its .hydra/hydra.yaml: storage, study_name and launch directory
    (which a relative SQLite or journal path is relative to)."""
    from omegaconf import OmegaConf

    subdir = str(OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir"))
    if "hydra.sweeper.trial" not in subdir and "hydra.job.num" not in subdir:
        return
    mine = study_identity(url, study_name)
    taken = []
    for hydra_yaml in sweep_dir.glob("*/.hydra/hydra.yaml") if sweep_dir.is_dir() else []:
        if not hydra_yaml.parent.parent.name.isdigit():
            continue
        hydra = (yaml.safe_load(hydra_yaml.read_text()) or {}).get("hydra") or {}
        sweeper = hydra.get("sweeper") or {}
        cwd = (hydra.get("runtime") or {}).get("cwd")
        # an in-memory study restarts its numbers at 0: any trial folder would be overwritten
        if url is None or study_identity(sweeper.get("storage"), sweeper.get("study_name"), cwd) != mine:
            taken.append(int(hydra_yaml.parent.parent.name))
    if taken:
        raise ConfigError("hydra.sweep.dir", f"{sweep_dir} already holds trial folder(s) {sorted(taken)[:10]} "
                          "of another study; use a new sweep dir, or the same hydra.sweeper.storage and "
                          "study_name to continue that study")


def queue_grid(study, points: list[dict], created: bool) -> None:
    """Queue, once, the grid points no trial of the study has: the worker that creates a grid study
    queues them and marks the study; workers only take queued points (claim), so no point runs
    twice and a finished grid runs nothing."""
    storage, sid = study._storage, study._study_id
    if not created and GRID not in storage.get_study_system_attrs(sid):
        legacy = any("grid_id" in t.system_attrs for t in study.get_trials(deepcopy=False))  # GridSampler's
        deadline = time.time() + (0 if legacy else GRID_WAIT_S)
        while GRID not in storage.get_study_system_attrs(sid) and time.time() < deadline:
            time.sleep(0.5)  # the creator is queueing the points
    queued = json.loads(storage.get_study_system_attrs(sid).get(GRID, "[]"))
    have = {_point_key(t.params or t.system_attrs.get("fixed_params", {})) for t in study.get_trials(deepcopy=False)}
    new = [p for p in points if _point_key(p) not in have and _point_key(p) not in set(queued)]
    for point in new:
        study.enqueue_trial(point)
    if new or created:
        storage.set_study_system_attr(sid, GRID, json.dumps(queued + [_point_key(p) for p in new]))


def claim(study, cap: int | None, grid: bool, beats: "Heartbeats") -> int | None:
    """The id of the next trial this worker runs, RUNNING and with a first heartbeat: a queued trial (a grid
    point, a retried trial) if any is left, else a new one (not for grids); None when the grid or
    max_trials is used up. The storage hands out trial numbers, so workers never share one.
    Optuna's own ask does the same but cannot be told to take queued trials only, nor to stop at a cap."""
    storage, trial_id = study._storage, None
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if cap is not None and t.number >= cap:
            continue
        try:
            if storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):  # compare-and-set
                trial_id = t._trial_id
                break
        except UpdateFinishedTrialError:
            continue  # another worker finished it meanwhile
    if trial_id is None:
        if grid or (cap is not None and len(study.get_trials(deepcopy=False)) >= cap):
            return None
        trial_id = storage.create_new_trial(study._study_id)
        if cap is not None and storage.get_trial_number_from_id(trial_id) >= cap:  # another worker took the last place
            storage.set_trial_system_attr(trial_id, OVER_CAP, True)
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
            return None
    beats.beat(storage, [trial_id], first=True)  # at once, before its job starts
    return trial_id


def number(study, trial_id: int) -> int:
    return study._storage.get_trial_number_from_id(trial_id)


def storage_of(study):
    return study._storage


def trial_ids(trials) -> list[int]:
    return [t._trial_id for t in trials]


class Heartbeats:
    """A worker's heartbeats on its running trials, and failing the stale trials of killed workers.

    A database storage (RDBStorage) has Optuna's own heartbeat: it is opened with heartbeat_interval
    and grace_period, a beat is `record_heartbeat`, and `optuna.storages.fail_stale_trials` fails a
    trial whose beat is older than the grace period and calls the retry callback. A journal file
    has no heartbeat in Optuna (5.1), so there a beat is a STAMP on the trial (a system attr), and
    a RUNNING trial neither stamped nor started within the grace period is failed here, with the
    same callback. Optuna never fails a trial that has no heartbeat at all (one a worker of an
    older mmpt left, or one killed before its first beat): on a database, the RUNNING trials not
    marked OPTUNA_BEATS are judged by the journal's rule. None at all for an in-memory study (no
    other worker could notice) or with heartbeat.interval=null."""

    def __init__(self, url, interval: int | None, grace: int, max_retry: int):
        self.every = None if url is None else interval
        self.grace, self.failed = grace, 0
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry) if max_retry else None

        def on_stale(study, trial) -> None:  # each stale trial, once failed
            self.failed += 1
            log.warning("trial %d: no heartbeat for over %d s (its worker was killed): marked FAIL%s", trial.number,
                        grace, ", queued again" if retry else "")
            if retry is not None:
                retry(study, trial)
        self.on_stale = on_stale

    def for_storage(self) -> Heartbeat | None:
        """What the storage is opened with: a storage with a heartbeat of its own uses it."""
        return None if self.every is None else Heartbeat(self.every, self.grace, self.on_stale)

    @staticmethod
    def _optunas(storage) -> bool:
        return getattr(storage, "get_heartbeat_interval", lambda: None)() is not None

    def beat(self, storage, ids: list[int], first: bool = False) -> None:
        if self.every is None:
            return
        for tid in ids:
            try:
                if self._optunas(storage):
                    if first:  # marks the trial as Optuna's to fail (see fail_stale)
                        storage.set_trial_system_attr(tid, OPTUNA_BEATS, True)
                    storage.record_heartbeat(tid)
                else:
                    storage.set_trial_system_attr(tid, STAMP, time.time())
            except UpdateFinishedTrialError:
                pass  # the job has finished its trial: nothing left to keep alive
            except Exception as e:  # a storage hiccup: the next beat tries again
                log.warning("heartbeat of trial id %d failed: %s", tid, str(e).splitlines()[0][:200])

    @contextlib.contextmanager
    def beating(self, study, trials):
        """Beat on the trials every interval seconds until the block ends (their jobs run in it)."""
        if self.every is None:
            yield
            return
        stop, ids = threading.Event(), trial_ids(trials)

        def loop():
            while not stop.wait(self.every):
                self.beat(study._storage, ids)

        thread = threading.Thread(target=loop, name="mmpt-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def fail_stale(self, study) -> int:
        """Fail the study's stale RUNNING trials (a killed worker's), queueing each again when
        heartbeat.max_retry allows. Returns how many this call failed."""
        if self.every is None:
            return 0
        before, storage = self.failed, study._storage
        optunas = self._optunas(storage)
        if optunas:
            optuna.storages.fail_stale_trials(study)  # calls on_stale for each trial it failed
        now = time.time()
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if optunas and t.system_attrs.get(OPTUNA_BEATS):
                continue  # Optuna's to judge (it never fails a trial without a heartbeat: the others are ours)
            started = t.datetime_start.timestamp() if t.datetime_start else 0.0
            if now - max(t.system_attrs.get(STAMP, 0.0), started) <= self.grace:
                continue
            try:
                if storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                    self.on_stale(study, storage.get_trial(t._trial_id))
            except UpdateFinishedTrialError:
                continue  # another worker failed it first
        return self.failed - before


def _point_key(point: dict) -> str:
    return json.dumps({k: point[k] for k in sorted(point)}, default=str)
