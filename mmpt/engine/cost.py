"""What a run cost, as PEFT's method comparison reports it: metrics.json's cost keys.

- `peak_mem_mb`: the run's own peak (`start_run` resets the trackers when it starts, so a sweep's
  or multirun's in-process jobs each get theirs, not the maximum of all jobs before): of GPU
  memory allocated by tensors (torch.cuda.max_memory_allocated, reset_peak_memory_stats), or on
  CPU of the process's resident set (VmHWM of /proc/self/status, reset through clear_refs after
  freed memory is handed back to the system: everything the process held while the run ran,
  the Python runtime, data and evaluation included; elsewhere than Linux, getrusage's lifetime
  peak);
- `train_tokens_per_s`: tokens of the training batches (attended source tokens plus target tokens,
  over all processes) per second of training steps (evaluation time is not counted);
- `adapter_mb`: the size on disk of the trained parameters (the best checkpoint's safetensors);
- `backbone_mb`: the backbone's frozen weights in memory as loaded, quantization constants
  included (a 4-bit backbone: its packed weights, their scales and the layers left in float);
  under FSDP, this process's shards.
"""
import ctypes
import ctypes.util
import gc
import resource
from pathlib import Path

import torch

from mmpt.engine.checkpoint import WEIGHTS

MB = 2 ** 20
KEYS = ("peak_mem_mb", "train_tokens_per_s", "adapter_mb", "backbone_mb")


def batch_tokens(batch: dict) -> int:
    """Tokens a training batch feeds the model: attended source tokens plus target tokens."""
    n = int(batch["attention_mask"].sum())
    if "labels" in batch:
        n += int((batch["labels"] != -100).sum())
    return n


def start_run(device: torch.device) -> None:
    """A run starts: from here on, peak_mem_mb measures this run's peak, not an earlier job's."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    gc.collect()
    libc = ctypes.util.find_library("c")
    if libc and hasattr(ctypes.CDLL(libc), "malloc_trim"):
        ctypes.CDLL(libc).malloc_trim(0)  # glibc keeps freed heap resident; the peak starts from what is held
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := the current resident set
    except OSError:
        pass  # not Linux: the lifetime peak


def _vm_hwm_kb() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MB
    hwm = _vm_hwm_kb()
    if hwm is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    return hwm / 1024


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t  # an FSDP shard (DTensor)


def _nbytes(t) -> int:
    t = _local(t)
    return t.numel() * t.element_size()


def backbone_bytes(backbone, trained=()) -> int:
    """Bytes of the backbone's own weights (parameters not in `trained`, the ids of the method's
    parameters) plus the quantization constants bitsandbytes keeps beside integer weights."""
    total, seen = 0, set(trained)
    for module in backbone.modules():
        for p in module.parameters(recurse=False):
            if id(p) in seen:  # trained, or tied (an LM head that is the input embedding) and counted
                continue
            seen.add(id(p))
            total += _nbytes(p)
            state = getattr(p, "quant_state", None)  # 4-bit: block scales (and their own constants)
            if state is not None:
                total += sum(_nbytes(v) for v in state.as_dict(packed=True).values() if torch.is_tensor(v))
        scb = getattr(getattr(module, "state", None), "SCB", None)  # 8-bit: row scales
        if scb is None:
            scb = getattr(getattr(module, "weight", None), "SCB", None)
        if torch.is_tensor(scb):
            total += _nbytes(scb)
    return total


def costs(model, train_tokens: int, train_time_s: float, best_dir, device) -> dict:
    """The four cost keys of a finished run (`best_dir`: its best checkpoint)."""
    trained = {id(p) for name, ps in model.param_groups().items() if name != "backbone" for p in ps}
    weights = Path(best_dir) / WEIGHTS if best_dir is not None else None
    return {
        "peak_mem_mb": round(peak_mem_mb(device), 1),
        "train_tokens_per_s": round(train_tokens / train_time_s, 1) if train_time_s > 0 else 0.0,
        "adapter_mb": round(weights.stat().st_size / MB, 4) if weights and weights.is_file() else 0.0,
        "backbone_mb": round(backbone_bytes(model.backbone, trained) / MB, 4),
    }
