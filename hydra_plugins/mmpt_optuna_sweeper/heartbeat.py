"""Heartbeats of a shared study: a worker stamps its RUNNING trials while their jobs run; a trial
not stamped for a grace period (its worker was killed) is failed by the next worker that looks,
and queued again with Optuna's RetryHeartbeatStaleTrialCallback."""
import contextlib
import logging
import threading
import time

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

log = logging.getLogger(__name__)

STAMP = "mmpt:heartbeat"  # trial system attr: when a worker last stamped the running trial


@contextlib.contextmanager
def beating(storage, trial_ids: list[int], every: int | None):
    """Stamp the trials every `every` seconds until the block ends (never when `every` is None)."""
    if every is None:
        yield
        return
    stop = threading.Event()

    def beat():
        while True:
            for tid in trial_ids:
                try:
                    storage.set_trial_system_attr(tid, STAMP, time.time())
                except UpdateFinishedTrialError:
                    pass  # the job has finished its trial: nothing left to keep alive
                except Exception as e:  # a storage hiccup: the next beat tries again
                    log.warning("heartbeat of trial id %d failed: %s", tid, str(e).splitlines()[0][:200])
            if stop.wait(every):
                return

    thread = threading.Thread(target=beat, name="mmpt-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def fail_stale(study, grace: int, max_retry: int) -> int:
    """Fail RUNNING trials not stamped (nor started) for over `grace` seconds; queue each again
    when `max_retry` allows. Returns how many this call failed."""
    storage, now, failed = study._storage, time.time(), 0
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry) if max_retry else None
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        started = t.datetime_start.timestamp() if t.datetime_start else 0.0
        if now - max(t.system_attrs.get(STAMP, 0.0), started) <= grace:
            continue
        try:
            if not storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # another worker failed it first
        failed += 1
        log.warning("trial %d: no heartbeat for over %d s (its worker was killed): marked FAIL%s", t.number,
                    grace, ", queued again" if retry else "")
        if retry is not None:
            retry(study, storage.get_trial(t._trial_id))
    return failed
