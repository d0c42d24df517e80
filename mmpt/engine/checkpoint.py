"""Checkpoints: trainable parameters (safetensors) + optimizer, schedule, RNG and data position.

Writes go to `<dir>.tmp`, which is renamed into place only once complete, so a crash mid-save
never leaves a loadable broken checkpoint: readers accept a directory only if it holds COMPLETE,
and a swap cut short leaves the previous checkpoint complete at `<dir>.old`.
"""
import json
import os
import pickle
import random
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from mmpt import tensorfile
from mmpt.engine import sharding
from mmpt.errors import CheckpointError

WEIGHTS, STATE, META, DONE = "trainable.safetensors", "state.pt", "meta.json", "COMPLETE"


def trainable_state(model) -> dict:
    """{name: tensor} of the trainable parameters; whole tensors also when the model is sharded
    (engine/sharding.py: then every process must call this, and all get them)."""
    return {n: sharding.full(p.detach()).contiguous().clone() for n, p in model.named_parameters()
            if p.requires_grad}


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def rng_untouched():
    """Run a block without advancing the global RNGs (python, numpy, torch, CUDA).

    Training draws dropout and router noise from the global torch RNG. Anything else that draws
    from it between two steps (evaluation, creating a DataLoader iterator, which takes a base
    seed) would shift that stream, and a resumed run, which creates its iterator mid-epoch where
    the uninterrupted run did not, would then train on other dropout masks. Saving and restoring
    the state around such blocks keeps training's stream a function of the steps taken alone;
    dedicated generators would not cover what libraries draw inside those blocks.
    """
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


KILL_ENV = "MMPT_TEST_KILL_AT"


def kill_point(event: str, step) -> None:
    """Test hook: SIGKILL this process when MMPT_TEST_KILL_AT is "<event>:<step>", so that
    tests/test_resume.py can interrupt a run exactly where it wants (events: `step` after a
    step's log / eval / save; `<checkpoint>-files`, `-swap`, `-clean` inside `save`). Unset (every
    real run), it does nothing."""
    if os.environ.get(KILL_ENV) == f"{event}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def save(path, model, meta: dict, state: dict | None = None, weights: dict | None = None) -> None:
    """Atomically write a checkpoint directory at `path` (replacing any previous one); weights:
    trainable_state(model) when the caller took it already (sharded models)."""
    path = Path(path)
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = trainable_state(model) if weights is None else weights
    save_file(weights, tmp / WEIGHTS)
    shapes = {n: list(t.shape) for n, t in weights.items()}
    (tmp / META).write_text(json.dumps({**meta, "params": shapes}, indent=1))
    kill_point(f"{path.name}-files", meta.get("step"))
    if state is not None:
        torch.save({**state, "rng": rng_state()}, tmp / STATE)
    (tmp / DONE).write_text("ok\n")
    if (path / DONE).exists():
        # `old` survives a kill during the last save's clean-up; `path` is complete, so drop it
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
    else:
        shutil.rmtree(path, ignore_errors=True)  # never complete: nothing to keep
    kill_point(f"{path.name}-swap", meta.get("step"))  # only `old` is complete here
    tmp.rename(path)
    kill_point(f"{path.name}-clean", meta.get("step"))
    shutil.rmtree(old, ignore_errors=True)


def find(path) -> Path | None:
    """The complete checkpoint at `path`, or the previous one if a swap was interrupted."""
    for p in (Path(path), Path(str(path) + ".old")):
        if (p / DONE).exists():
            return p
    return None


def read_meta(path) -> dict:
    try:
        return json.loads((Path(path) / META).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path}: unreadable {META} ({e})") from None


def load_weights(path, model, strict: bool = True, skip=()) -> dict:
    """Load the trainable weights into `model`; refuse any mismatch of names or shapes."""
    path = Path(path)
    if not (path / DONE).exists():
        raise CheckpointError(f"{path} is not a complete mmpt checkpoint (no {DONE} marker)")
    weights = tensorfile.load(path / WEIGHTS, CheckpointError, "checkpoint's weights")
    own = dict(model.named_parameters())
    meta = read_meta(path)
    unknown = sorted(set(weights) - set(own))
    if unknown:
        raise CheckpointError(f"checkpoint {path} (method `{meta.get('method')}`) has parameters this "
                              f"model lacks, e.g. {unknown[:3]}")
    for name, tensor in weights.items():
        if own[name].shape != tensor.shape:
            raise CheckpointError(f"checkpoint {path}: `{name}` has shape {list(tensor.shape)}, "
                                  f"the model expects {list(own[name].shape)}")
    wanted = {n for n, p in own.items() if p.requires_grad} - set(skip)
    missing = sorted(wanted - set(weights))
    if strict and missing:
        raise CheckpointError(f"checkpoint {path} lacks trainable parameters of this model, e.g. {missing[:3]}")
    for name, tensor in weights.items():
        if name not in skip:
            sharding.assign(own[name], tensor)
    return meta


def load_state(path) -> dict:
    try:
        return torch.load(Path(path) / STATE, weights_only=False)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:  # missing, truncated, corrupt
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {Path(path) / STATE}: cannot read the training state ({first}); "
                              "delete the checkpoint or run without resume=true") from None
