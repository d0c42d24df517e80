"""Progress of long loops: training steps, evaluation batches, a library's Arrow prototypes.

On a terminal (stderr a TTY) a tqdm bar redraws in place. Redirected to a file, a bar writes an
update at every step, so the log grows by a line per step; there a log line is written instead,
at most one every INTERVAL_S seconds and every FRACTION of the total (both must have passed since
the last line), and a last one when the loop ends if it wrote any or took INTERVAL_S or more.
A loop that finishes quickly writes nothing; a slow evaluation says where it is every ~30 s.
"""
import logging
import sys
import time

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

INTERVAL_S, FRACTION = 30.0, 0.1


def bar(total: int | None, desc: str, enabled: bool = True, initial: int = 0, leave: bool = True):
    """An object with update(n), set_postfix(**values), close() and `with` support: a tqdm bar on a
    terminal, else `Lines`. enabled=False (e.g. ranks > 0 under torchrun) shows nothing."""
    if enabled and sys.stderr.isatty():
        return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=leave)
    if not enabled:
        return tqdm(total=total, disable=True)
    return Lines(total, desc, initial)


def length(iterable) -> int | None:
    """len() of a loader, or None when it has none (the lines then count batches without a total)."""
    try:
        return len(iterable)
    except TypeError:
        return None


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Lines:
    """Throttled progress lines (see the module docstring). `clock` and `emit` are replaceable so
    the throttling can be tested without sleeping."""

    def __init__(self, total, desc, initial=0, clock=time.monotonic, emit=None, interval_s=None, fraction=None):
        self.total, self.desc, self.n, self.start_n = total, desc, initial, initial
        self.clock, self.emit = clock, emit or log.info
        self.interval_s = INTERVAL_S if interval_s is None else interval_s
        self.fraction = FRACTION if fraction is None else fraction
        self.start = self.last_t = clock()
        self.last_n, self.lines, self.postfix, self.closed = initial, 0, {}, False

    def set_postfix(self, refresh: bool = True, **values) -> None:
        self.postfix = values  # shown with the next line (tqdm's `refresh` has nothing to redraw here)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.total and self.n >= self.total:
            return  # the end is close()'s line
        now = self.clock()
        share = self.total is None or self.n - self.last_n >= self.fraction * self.total
        if share and now - self.last_t >= self.interval_s:
            self._line(now)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        now = self.clock()
        if self.lines or now - self.start >= self.interval_s:
            self._line(now, done=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _line(self, now: float, done: bool = False) -> None:
        elapsed = now - self.start
        count = f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else f"{self.n}"
        text = f"{self.desc}: {count} in {duration(elapsed)}"
        done_here = self.n - self.start_n
        if not done and self.total and done_here > 0:
            text += f", about {duration(elapsed / done_here * (self.total - self.n))} left"
        if self.postfix:
            text += ", " + ", ".join(f"{k}={v}" for k, v in self.postfix.items())
        self.emit(text)  # no args: a "%" in the text is not a format
        self.last_t, self.last_n, self.lines = now, self.n, self.lines + 1
