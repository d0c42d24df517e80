"""Evaluation: rank classification (default) or greedy generation, then the task's metrics."""
import contextlib
import inspect
import logging
import re

import torch

from mmpt import distributed
from mmpt.engine import progress, sharding
from mmpt.errors import ConfigError

log = logging.getLogger(__name__)


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def autocast(device, precision: str | None):
    """bf16 autocast on GPU; CPU runs stay in fp32 (bf16 matmuls are slow and lossy there)."""
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if precision == "bf16":
        log.warning("trainer.precision=bf16 applies on GPU only; this CPU run uses fp32")
    return contextlib.nullcontext()


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


@torch.no_grad()
def predict(model, loader, choices_of, mode: str = "rank", max_new_tokens: int = 10, precision=None,
            length_norm: float = 0, desc: str = "eval"):
    """Return ({index: predicted choice, -1 if no label matched}, {index: decoded text}, [aux dicts]).

    The decoded texts exist in generate mode only (rank mode decodes nothing: the dict is empty).
    choices_of(index) gives the verbalizers of example `index`. In a distributed run every process
    scores its rows of each batch and the predictions are gathered, so all processes return all.
    length_norm (rank mode): each choice's summed log-likelihood is divided by its token count to
    this power (0: the plain sum; only text-to-text models score choices token by token).
    `desc` names the loop in its progress bar (or lines, off a terminal).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    preds, texts, aux_all = {}, {}, []
    split = sharding.split_eval(model)  # fsdp: every process scores every row
    bar = progress.bar(progress.length(loader), desc, enabled=distributed.is_main(), leave=False)
    for batch in loader:
        batch = to_device(distributed.shard(batch) if split else batch, device)
        idx = batch["index"].tolist()
        if not idx:
            bar.update(1)
            continue
        with autocast(device, precision):
            if mode == "rank":
                result = model.score(batch, length_norm) if length_norm else model.score(batch)
            else:
                result = model.generate(batch, max_new_tokens)
        if mode == "rank":
            scores, aux = result
            pred = scores.argmax(-1).tolist()
        else:
            ids, aux = result
            decoded = model.tokenizer.batch_decode(ids, skip_special_tokens=True)
            texts.update(zip(idx, decoded))
            pred = []
            for i, text in zip(idx, decoded):
                names = [normalise(c) for c in choices_of(i)]
                pred.append(names.index(normalise(text)) if normalise(text) in names else -1)
        preds.update(zip(idx, pred))
        aux_all.append({k: v.cpu() if torch.is_tensor(v) else v for k, v in aux.items()})
        bar.update(1)
    bar.close()
    model.train(was_training)
    if distributed.world_size() > 1 and split:
        parts = distributed.gather_objects((preds, texts, aux_all))
        preds = {i: p for part, _, _ in parts for i, p in part.items()}
        texts = {i: t for _, part, _ in parts for i, t in part.items()}
        aux_all = [a for _, _, part in parts for a in part]
    return preds, texts, aux_all


def check_length_norm(model, value: float) -> None:
    """trainer.rank_length_norm (a number >= 0: mmpt/settings.py) > 0 only for models that score
    choice tokens."""
    if value and "length_norm" not in inspect.signature(model.score).parameters:
        raise ConfigError("trainer.rank_length_norm", f"{type(model).__name__} scores choices with a "
                          "classifier head, not token by token: use 0")


def evaluate(model, loader, examples, task, settings, desc="eval"):
    """Metrics (with `invalid_rate` in generate mode), prediction rows and routing diagnostics, as
    `settings` (mmpt.settings.EvaluationSettings) say: rank or generate, precision, length norm.

    In generate mode each row also has `output`, the decoded text, so that outputs that match no
    label (`prediction` null, counted in `invalid_rate`) can be read."""
    mode = settings.mode
    check_length_norm(model, settings.length_norm)
    # a mixture's examples may each have their own choices (promptsource templates)
    choices = getattr(task, "choices_of", lambda ex: task.verbalizers)
    with sharding.gathered(model):  # fsdp: the top-level weights, for the pass and the method's stats
        preds, texts, aux = predict(model, loader, lambda i: choices(examples[i]), mode, settings.max_new_tokens,
                                    settings.precision, settings.length_norm, desc)
        stats = model.method.eval_stats(aux)
    order = [preds[i] for i in range(len(examples))]
    metrics = task.metrics(order, examples)
    if mode == "generate":
        metrics["invalid_rate"] = sum(p < 0 for p in order) / max(len(order), 1)
    rows = [{"id": ex.id, "prediction": choices(ex)[p] if p >= 0 else None,
             "label": choices(ex)[ex.label]} for ex, p in zip(examples, order)]
    if mode == "generate":
        for i, row in enumerate(rows):
            row["output"] = texts[i]
    return metrics, rows, stats
