"""Evaluation: rank classification (default) or greedy generation, then the task's metrics."""
import re

import torch


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


@torch.no_grad()
def predict(model, loader, choices_of, mode: str = "rank", max_new_tokens: int = 10):
    """Return ({index: predicted choice, -1 if no label matched}, [aux dicts]).

    choices_of(index) gives the verbalizers of example `index`.
    """
    was_training = model.training
    model.eval()
    preds, aux_all = {}, []
    for batch in loader:
        idx = batch["index"].tolist()
        if mode == "rank":
            scores, aux = model.score(batch)
            pred = scores.argmax(-1).tolist()
        else:
            ids, aux = model.generate(batch, max_new_tokens)
            texts = model.tokenizer.batch_decode(ids, skip_special_tokens=True)
            pred = []
            for i, text in zip(idx, texts):
                names = [normalise(c) for c in choices_of(i)]
                pred.append(names.index(normalise(text)) if normalise(text) in names else -1)
        preds.update(zip(idx, pred))
        aux_all.append(aux)
    model.train(was_training)
    return preds, aux_all


def evaluate(model, loader, examples, task, mode="rank", max_new_tokens=10):
    """Metrics (with `invalid_rate` in generate mode), prediction rows and routing diagnostics."""
    verbalizers = task.verbalizers
    preds, aux = predict(model, loader, lambda i: verbalizers, mode, max_new_tokens)
    order = [preds[i] for i in range(len(examples))]
    metrics = task.metrics(order, examples)
    if mode == "generate":
        metrics["invalid_rate"] = sum(p < 0 for p in order) / max(len(order), 1)
    rows = [{"id": ex.id, "prediction": verbalizers[p] if p >= 0 else None,
             "label": verbalizers[ex.label]} for ex, p in zip(examples, order)]
    stats = model.method.eval_stats(aux)
    return metrics, rows, stats
