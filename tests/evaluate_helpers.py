"""Tiny finished runs for the mmpt.evaluate tests, trained once per session and shared."""
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_cfg

MODELS = {"llama": "llama_tiny", "gpt2": "gpt2_tiny", "t5": "t5_tiny"}
METHODS = ["lora", "ia3", "prompt_tuning", "prefix", "prefix_routing", "prompt_routing", "poly_lora", "poly_ia3", "full"]
# learning rates that move the weights in 2 steps; short CB prompts (48 tokens: truncation matters)
METHOD_ARGS = {"lora": ["optimizer.groups.adapters.lr=0.05"], "ia3": ["optimizer.groups.adapters.lr=0.05"],
               "poly_lora": ["optimizer.groups.adapters.lr=0.05", "method.n_skills=2"],
               "poly_ia3": ["optimizer.groups.adapters.lr=0.05", "method.n_skills=2"],
               "prompt_tuning": ["method.num_virtual_tokens=4"], "prefix": ["method.num_virtual_tokens=3"]}
RUN_ARGS = ["dataset=cb", "dataset.max_length=48", "k_shot=8", "trainer.max_steps=2", "trainer.eval_every=2",
            "trainer.batch_size=4"]


def train_run(out: Path, args: list[str]) -> Path:
    """train() as train.py runs it, with the config Hydra saves in the run dir."""
    from mmpt.recipes import train

    cfg = compose_cfg(args, run_dir=out)
    (out / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
    train(cfg)
    return out


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """runs(backbone, method) -> the folder of a finished 2-step CB run (trained on first use)."""
    made = {}

    def get(backbone, method):
        if (backbone, method) not in made:
            out = tmp_path_factory.mktemp(f"{backbone}_{method}") / "run"
            made[backbone, method] = train_run(out, [f"model={MODELS[backbone]}", f"method={method}",
                                                     *RUN_ARGS, *METHOD_ARGS.get(method, [])])
        return made[backbone, method]
    return get


def samples(run: Path, task: str, base: bool = False) -> list[dict]:
    folder = run / "eval" / ("base" if base else "")
    files = sorted(folder.glob(f"samples_{task}_*.jsonl"))
    rows = [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]
    return sorted(rows, key=lambda r: r["doc_id"])


def mmpt_scores(model, dataset, n, task_id, max_length):
    """[n, C] mmpt's own rank scores of the first n test examples (its data layer, task id `task_id`)."""
    from mmpt.data.collate import EncodedSplit, collate
    from mmpt.data.splits import resolve_data_dir
    from mmpt.data.tasks import get_task

    task = get_task(dataset)
    examples = task.read("validation", resolve_data_dir(None))[:n]
    split = EncodedSplit(examples, model.tokenizer, max_length, task.verbalizers, task_id=task_id)
    return model.score(collate([split[i] for i in range(len(examples))], split.pad_id))[0]


def lls(row: dict) -> list[float]:
    """The log-likelihood lm-eval got for each choice of a sample."""
    return [float(r[0]) for r in row["filtered_resps"]]


def agree(run: Path, task="mmpt_cb", dataset="cb", model=None, task_id=0):
    """lm-eval's samples (--log-samples) against the run: its choice is predictions/test.jsonl's on
    every example, its log-likelihoods `model`'s own rank scores with `task_id` (default: the run's
    best weights as open_run rebuilds them), its acc (and CB's f1) the run's test metrics."""
    from mmpt.data.tasks import get_task
    from mmpt.runs import load_model, open_run

    verbalizers = get_task(dataset).verbalizers
    preds = [json.loads(line) for line in (run / "predictions" / "test.jsonl").read_text().splitlines()]
    rows = samples(run, task)
    assert [r["doc_id"] for r in rows] == list(range(len(preds)))
    assert [r["doc"]["id"] for r in rows] == [p["id"] for p in preds]  # predictions/test.jsonl's order
    chosen = [max(range(len(verbalizers)), key=lambda c: lls(r)[c]) for r in rows]
    assert chosen == [verbalizers.index(p["prediction"]) for p in preds]
    # and the scores themselves: a 2-step tiny model may choose one class whatever its routing
    model = load_model(open_run(run)) if model is None else model
    max_length = OmegaConf.load(run / ".hydra" / "config.yaml").dataset.max_length
    own = mmpt_scores(model, dataset, len(rows), task_id, max_length)
    assert (torch.tensor([lls(r) for r in rows]) - own).abs().max() < 1e-4
    res = json.loads((run / "eval" / "results.json").read_text())["results"][task]
    metrics = json.loads((run / "metrics.json").read_text())
    assert res["acc,none"] == pytest.approx(metrics["test/acc"], abs=1e-12)
    if dataset == "cb":
        assert res["f1,none"] == pytest.approx(metrics["test/f1"], abs=1e-12)
