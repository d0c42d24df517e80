"""How a run spreads its model over torchrun's processes: `trainer.strategy=ddp|fsdp`.

- `ddp`: every process holds the whole model; DistributedDataParallel averages the gradients.
- `fsdp`: FSDP2 (`torch.distributed.fsdp.fully_shard`) on every transformer block of the backbone
  (the classes transformers lists in `_no_split_modules`), then on the whole model: each process
  keeps 1/N of every weight, frozen or trainable, and gathers a block's weights only while that
  block runs. Gradients are reduce-scattered (averaged) like DDP's, so with the loss weighting of
  engine/loop.py N processes train exactly as one does.

Under fsdp, evaluation gathers the top-level weights (embeddings, head, the method's own tables)
for its duration and every process scores every row of a batch (no process may skip a block's
collective), and checkpoints hold the full trainable tensors, gathered on every process and
written by rank 0 in the usual format; the optimizer state is saved gathered too (by parameter
name) and scattered back on resume. Process group: gloo on CPU, NCCL on GPU (distributed.py).
"""
import os
from contextlib import contextmanager

import torch
from torch.nn.parallel import DistributedDataParallel

from mmpt import distributed
from mmpt.errors import ConfigError

def check_strategy(value: str, quantized: bool) -> str:
    """trainer.strategy (one of mmpt.settings.STRATEGIES), checked against the command alone (before
    the run dir is made or anything heavy loads): fsdp only under torchrun and never on a quantized
    backbone."""
    if value == "fsdp":
        if "LOCAL_RANK" not in os.environ:
            raise ConfigError("trainer.strategy", "fsdp shards the model over the processes torchrun starts: "
                              "run `torchrun --nproc-per-node N train.py ...`, or leave trainer.strategy=ddp")
        if quantized:
            raise ConfigError("trainer.strategy", "fsdp cannot shard the integer weights of a quantized backbone "
                              "(model.quantization); use ddp")
    return value


def strategy(value: str, model) -> str:
    """trainer.strategy, checked against the run (one line before training)."""
    return check_strategy(value, any(not p.is_floating_point() for p in model.backbone.parameters()))


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _blocks(backbone) -> list:
    names = set(getattr(backbone, "_no_split_modules", None) or ())
    return [m for m in backbone.modules() if type(m).__name__ in names]


def wrap(model, how: str, device):
    """The module the training step calls: `model` itself (one process, or sharded in place by
    fsdp) or its DistributedDataParallel wrapper."""
    if distributed.world_size() == 1:
        return model
    if how == "ddp":
        # routes/skills a batch does not use get no gradient
        return DistributedDataParallel(model, find_unused_parameters=True,
                                       device_ids=[device.index] if device.type == "cuda" else None)
    from torch.distributed.fsdp import fully_shard

    blocks = _blocks(model.backbone)
    if not blocks:
        raise ConfigError("trainer.strategy", f"this {model.backbone.config.model_type} backbone names no "
                          "transformer blocks (_no_split_modules) to shard: use ddp")
    names = {id(p): n for n, p in model.named_parameters()}
    for block in blocks:
        fully_shard(block)
    fully_shard(model)
    # FSDP takes its root from the first module whose forward runs; evaluation calls blocks
    # without the model's forward, so the whole model is made the root now.
    model._get_fsdp_state()._lazy_init()
    # fully_shard replaced every parameter by its shard: parameter lists taken before (a
    # fine-tuning type's groups) are mapped to the new parameters by name.
    own = dict(model.named_parameters())
    groups = model.param_groups
    model.param_groups = lambda: {g: [own[names[id(p)]] if id(p) in names else p for p in ps]
                                  for g, ps in groups().items()}
    return model


@contextmanager
def gathered(model):
    """The top-level weights gathered for an evaluation (blocks gather their own as they run)."""
    if not is_sharded(model):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def split_eval(model) -> bool:
    """Whether processes score disjoint rows of an eval batch (not under fsdp: see above)."""
    return not is_sharded(model)


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a shard (a collective under fsdp: every process must call it)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


@torch.no_grad()
def assign(param, value: torch.Tensor) -> None:
    """param <- value (the whole tensor), for a plain or a sharded parameter."""
    if hasattr(param, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        # every process read the same file: each keeps its own shard, no communication
        value = distribute_tensor(value.to(param.device, param.dtype), param.device_mesh, param.placements,
                                  src_data_rank=None)
    param.copy_(value)


def _dcp():
    from torch.distributed.checkpoint import state_dict as dcp

    return dcp, dcp.StateDictOptions(full_state_dict=True, cpu_offload=True)


def optimizer_state(model, opt) -> dict:
    """The optimizer's state to save (under fsdp gathered, keyed by parameter name: a collective)."""
    if not is_sharded(model):
        return opt.state_dict()
    dcp, options = _dcp()
    return dcp.get_optimizer_state_dict(model, opt, options=options)


def load_optimizer_state(model, opt, state: dict) -> None:
    if not is_sharded(model):
        opt.load_state_dict(state)
        return
    dcp, options = _dcp()
    dcp.set_optimizer_state_dict(model, opt, state, options=options)
