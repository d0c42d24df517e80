"""Helpers to run the toy sweep app (app.py, toy.yaml) from the sweeper's tests."""
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[2]
APP = Path(__file__).with_name("app.py")
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "MMPT_ROOT": str(ROOT), "HF_HUB_OFFLINE": "1"}


def start(*args, env=None) -> subprocess.Popen:
    """One sweep process (a worker) of the toy app."""
    return subprocess.Popen([sys.executable, str(APP), *args], cwd=ROOT, env={**ENV, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run(*args, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(APP), *args], cwd=ROOT, env={**ENV, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def workers(n: int, *args, timeout=180) -> list[str]:
    """Run n workers at once; their outputs (each must exit 0)."""
    procs = [start(*args) for _ in range(n)]
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-2000:]
    return outs


def jobs(sweep_dir: Path) -> dict[int, dict]:
    """{trial folder number: its job.json}."""
    return {int(f.parent.name): json.loads(f.read_text()) for f in Path(sweep_dir).glob("*/job.json")}


def storage(url: str):
    if url.startswith("journal:///"):
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url[len("journal:///"):]))
    return url


def trials(url: str, name: str) -> list:
    return optuna.load_study(study_name=name, storage=storage(url)).trials
