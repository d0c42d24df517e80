"""A sweep under torchrun (`torchrun --nproc-per-node 2 train.py -m ... trainer.strategy=fsdp`): each
trial runs in both processes, rank 0 asks and tells the study, and the trials train exactly like the
same sweep in one process; pruning (at an evaluation, and between the seeds of mean_over_seeds) stops
every rank at once; launchers that would start trials outside the process group are refused."""
import json
import os
import subprocess
import sys

import optuna
import pytest

from conftest import DATA, ROOT

pytestmark = [pytest.mark.subprocess, pytest.mark.distributed, pytest.mark.sweep]

ENV = {**os.environ, "MMPT_DATA_DIR": str(DATA), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
       "OMP_NUM_THREADS": "1"}
# llama_tiny LoRA with dropout off (as tests/test_fsdp.py), two TPE trials from sampler seed 0
SWEEP = ["model=llama_tiny", "method=lora", "method.dropout=0.0", "dataset=cb", "dataset.max_length=64", "k_shot=32",
         "trainer.batch_size=8", "trainer.max_steps=4", "trainer.eval_every=2", "trainer.log_every=1", "seed=3",
         "hparams_search=lora", "hydra.sweeper.sampler.seed=0", "hydra.sweeper.study_name=s"]


# sitecustomize for the sweep's processes: each SQLite connection a rank > 0 opens, one line in a file
WATCH_SQLITE = """import os, sys
if os.environ.get("RANK", "0") != "0":
    def _hook(event, args):
        if event == "sqlite3.connect":
            with open(os.environ["MMPT_TEST_SQLITE_LOG"], "a") as f:
                f.write(f"rank {os.environ['RANK']} connected to {args[0]}\\n")
    sys.addaudithook(_hook)
"""


def sweep(tmp_path, name: str, procs: int, *more, sweep_dir=None, db=True, env=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable] + (["-m", "torch.distributed.run", f"--nproc_per_node={procs}"] if procs > 1 else [])
    storage = [f"hydra.sweeper.storage=sqlite:///{tmp_path / name}.db"] if db else []  # else in memory
    return subprocess.run([*cmd, "train.py", "-m", *SWEEP, *storage, f"hydra.sweep.dir={sweep_dir or tmp_path / name}",
                           *more], cwd=ROOT, env={**ENV, **(env or {})}, capture_output=True,
                          text=True, timeout=420)  # a rank left waiting for the others ends here, not in a hang


def study(tmp_path, name: str) -> list:  # from its SQLite file
    return optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / name}.db").trials


def losses(run) -> dict:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in lines if "train/loss" in r}


def test_an_fsdp_sweep_under_torchrun_runs_each_trial_once_like_one_process(tmp_path):
    proc = sweep(tmp_path, "one", 1, "hydra.sweeper.n_trials=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # a sweep dir each process resolves at its own microsecond: the trials go to rank 0's
    # rank 1 never reports to the trial (rank 0 alone does, and decides for both): it never opens the study
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(WATCH_SQLITE)
    watch = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]),
             "MMPT_TEST_SQLITE_LOG": str(tmp_path / "rank1_sqlite.log")}
    proc = sweep(tmp_path, "fsdp", 2, "hydra.sweeper.n_trials=2", "trainer.strategy=fsdp",
                 sweep_dir=f"{tmp_path}/fsdp/${{now:%H-%M-%S-%f}}", env=watch)
    assert proc.returncode == 0, proc.stderr[-3000:]
    connected = (tmp_path / "rank1_sqlite.log").read_text() if (tmp_path / "rank1_sqlite.log").exists() else ""
    assert "fsdp.db" not in connected, connected
    (fsdp_dir,) = (tmp_path / "fsdp").iterdir()
    one, fsdp = study(tmp_path, "one"), study(tmp_path, "fsdp")
    assert [t.state.name for t in fsdp] == ["COMPLETE", "COMPLETE"]
    assert [t.params for t in fsdp] == [t.params for t in one]  # rank 0 asked, from the same sampler seed
    for a, b in zip(one, fsdp):
        assert b.value == pytest.approx(a.value, abs=1e-6)
        la, lb = losses(tmp_path / "one" / str(a.number)), losses(fsdp_dir / str(b.number))
        assert la.keys() == lb.keys() == {1, 2, 3, 4}
        assert lb == pytest.approx(la, rel=1e-4, abs=1e-5)
    assert sorted(p.name for p in fsdp_dir.iterdir() if p.is_dir()) == ["0", "1"]
    for number in ("0", "1"):  # rank 0 wrote the trial's config and log
        assert (fsdp_dir / number / ".hydra" / "config.yaml").exists() and (fsdp_dir / number / "train.log").exists()
    log = proc.stdout + proc.stderr
    assert log.count("Launching 1 jobs locally") == 2  # rank 1 prints no launch lines of its own


def test_pruning_under_torchrun_stops_every_rank_at_the_evaluation_or_between_seeds(tmp_path):
    prune_all = ["trainer.strategy=fsdp", "hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.lower=1.01"]
    # an in-memory study: only rank 0's process holds it, and it decides for both
    proc = sweep(tmp_path, "evals", 2, "hydra.sweeper.n_trials=2", *prune_all, db=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = (tmp_path / "evals" / "optimization_results.yaml").read_text()
    assert "PRUNED: 2" in results and "COMPLETE" not in results
    for number in ("0", "1"):
        metrics = json.loads((tmp_path / "evals" / number / "metrics.json").read_text())
        assert metrics["pruned"] is True and metrics["pruned_step"] == 2  # the first evaluation
        assert max(losses(tmp_path / "evals" / number)) == 2  # no step after it
    proc = sweep(tmp_path, "seeds", 2, "hydra.sweeper.n_trials=1", "mean_over_seeds=[1,2]", *prune_all, db=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "PRUNED: 1" in (tmp_path / "seeds" / "optimization_results.yaml").read_text()
    run = tmp_path / "seeds" / "0"  # pruned at step 1, the mean of seed 1 alone
    assert (run / "seed_1" / "metrics.json").exists() and not (run / "seed_2").exists()
    assert json.loads((run / "metrics.json").read_text())["pruned_step"] == 1


def test_a_launcher_that_starts_trials_outside_the_process_group_is_refused(tmp_path):
    proc = sweep(tmp_path, "joblib", 2, "hydra/launcher=joblib", "hydra.sweeper.n_trials=1")
    assert proc.returncode != 0
    assert "config error at `hydra.launcher`: under torchrun each trial runs in the sweep's own processes" in proc.stderr
    assert not (tmp_path / "joblib").exists() and optuna.get_all_study_summaries(f"sqlite:///{tmp_path}/joblib.db") == []
