"""An encoder run's task heads, which no PEFT tuner knows: written beside the adapter.

head.safetensors holds `<i>.weight` [labels, d] and `<i>.bias` of head i; head.json says how to
use them: mean-pool the last hidden states over attended positions, apply the head of the task;
a classification head scores its labels, a regression head (STS-B) predicts the value directly.
"""
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from mmpt import tensorfile
from mmpt.export.mapping import ExportError

WEIGHTS, INFO = "head.safetensors", "head.json"


def write(model, tasks, out: Path) -> None:
    tensors = {f"{i}.{k}": v.detach().contiguous() for i, h in enumerate(model.heads)
               for k, v in h.state_dict().items()}
    save_file(tensors, out / WEIGHTS)
    info = {"pooling": "mean of last_hidden_state over positions where attention_mask is 1",
            "heads": [{"task": t.name, "labels": list(t.verbalizers), "regression": r,
                       "shape": list(h.weight.shape)}
                      for t, r, h in zip(tasks, model.regression, model.heads)]}
    (out / INFO).write_text(json.dumps(info, indent=1))


def load(model, tasks, path: Path) -> bool:
    """Load the heads written by `write` into an encoder model; False when the directory has none."""
    if not (path / WEIGHTS).is_file():
        return False
    try:
        info = json.loads((path / INFO).read_text())["heads"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ExportError(f"{path / INFO}: cannot read the heads' description ({tensorfile.reason(e)}); "
                          f"expected the JSON written beside {WEIGHTS}, with a `heads` list") from None
    mine = [t.name for t in tasks]
    if [h["task"] for h in info] != mine or any(h["labels"] != list(t.verbalizers) for h, t in zip(info, tasks)):
        raise ExportError(f"{path / INFO}: heads for tasks {[h['task'] for h in info]} with their labels; "
                          f"this run's dataset needs {mine}")
    tensors = tensorfile.load(path / WEIGHTS, ExportError, "task heads")
    with torch.no_grad():
        for i, head in enumerate(model.heads):
            for k, v in head.state_dict(keep_vars=True).items():
                v.copy_(tensors[f"{i}.{k}"])
    return True
