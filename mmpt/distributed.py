"""Data-parallel helpers for `torchrun --nproc_per_node=N train.py ...` (gloo on CPU, NCCL on GPU).

The data layer always builds *global* batches (trainer.batch_size x world size); each process
takes its rows with `shard`, so N processes see exactly what one process with the global batch
would see. Only rank 0 writes files and logs.
"""
import os
from contextlib import contextmanager

import torch
import torch.distributed as dist


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def init() -> None:
    """Join the process group torchrun describes (WORLD_SIZE > 1), once per process."""
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not active():
        if torch.cuda.is_available():
            torch.cuda.set_device(device())
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


@contextmanager
def session():
    """The process group for the duration of a run; left when the run ends (however it ends).

    It may already be joined: under torchrun the run-dir callback (mmpt.cli.TorchrunRunDir) joins
    it before Hydra makes the run dir, and a sweep's processes keep it from trial to trial; who
    joined it leaves it."""
    joined = not active()
    init()
    try:
        yield
    finally:
        if joined:
            leave()


def leave() -> None:
    if active():
        dist.destroy_process_group()


def shard(batch: dict, r: int | None = None, n: int | None = None) -> dict:
    """This process's rows of a global batch (rows r, r+n, ...)."""
    r, n = rank() if r is None else r, world_size() if n is None else n
    return batch if n == 1 else {k: v[r::n].contiguous() for k, v in batch.items()}


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's `obj` on every process (`obj` itself when not distributed)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj) -> list:
    """Every process's `obj`, in rank order (a one-element list when not distributed)."""
    if not active():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_sum(t: torch.Tensor) -> torch.Tensor:
    if active():
        t = t.clone()
        dist.all_reduce(t)
    return t
