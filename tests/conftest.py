"""Shared test helpers: a tiny T5 built in-process, toy batches, composed Hydra configs."""
import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict
from transformers import BertConfig, BertModel

from mmpt.models.backbone import load_tokenizer, minilm_dir

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MMPT_DATA_DIR", ROOT.parent / "shared" / "data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

TINY = dict(build="t5_tiny", name_or_path=None, tokenizer=None, d_model=32, d_kv=8, d_ff=64,
            num_layers=2, num_heads=4, dropout=0.0)

METHOD_CFGS = {
    "full": dict(name="full"),
    "prompt_tuning": dict(name="prompt_tuning", num_virtual_tokens=8, init="vocab"),
    "prefix": dict(name="prefix", num_virtual_tokens=3, placement="both", init_std=1.0),
    "lora": dict(name="lora", rank=4, alpha=8, dropout=0.0,
                 target_modules=r".*(SelfAttention|EncDecAttention)\.(q|v)"),
}


def load_run(path):
    """(config, model with the best weights, in eval mode) of a finished train.py run dir."""
    from mmpt.runs import load_model, open_run

    run = open_run(path)
    return run.cfg, load_model(run)


def tiny_cfg(**over):
    return OmegaConf.create({**TINY, **over})


def make_model(method: dict | str, seed: int = 0, **model_over):
    from mmpt.models import build_model

    cfg = METHOD_CFGS[method] if isinstance(method, str) else method
    torch.manual_seed(seed)
    return build_model(tiny_cfg(**model_over), OmegaConf.create(cfg))


def toy_batch(tokenizer, texts=("the cat sat on the mat", "a dog", "birds fly south in winter"),
              choices=("yes", "no"), labels=(0, 1, 0)):
    """A batch in the data layer's format, built straight from the tokenizer."""
    enc = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    cho = [tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for c in choices]
    s, t = max(map(len, enc)), max(map(len, cho))
    ids = torch.tensor([e + [tokenizer.pad_token_id] * (s - len(e)) for e in enc])
    choice_ids = torch.tensor([[c + [-100] * (t - len(c)) for c in cho]] * len(texts))
    label = torch.tensor(labels)
    return {"input_ids": ids, "attention_mask": (ids != tokenizer.pad_token_id).long(),
            "labels": choice_ids[torch.arange(len(texts)), label].contiguous(), "choice_ids": choice_ids,
            "choice_mask": torch.ones(len(texts), len(choices), dtype=torch.bool), "label": label,
            "task_id": torch.zeros(len(texts), dtype=torch.long), "index": torch.arange(len(texts))}


def compose_cfg(overrides=(), config_name="train", run_dir=None):
    """Compose a run config the way the CLI does, with outputs under run_dir."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir) if run_dir else None
        cfg.paths.data_dir = str(DATA)
    return cfg


@pytest.fixture
def tiny():
    return make_model


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _no_unmarked_processes(request, monkeypatch):
    """MMPT_TEST_FORBID_PROCESSES=1: a test that starts a process without the `subprocess` marker
    fails, so `-m "not subprocess"` (the fast loop, docs/design.md "Tests") never starts one.
    Off by default: an audit to run after adding tests, not a cost on every run."""
    if os.environ.get("MMPT_TEST_FORBID_PROCESSES") != "1" or request.node.get_closest_marker("subprocess"):
        return
    import multiprocessing.util
    import subprocess

    def refuse(*args, **kwargs):
        raise AssertionError(f"{request.node.nodeid} starts a process: mark it @pytest.mark.subprocess")

    execute = subprocess.Popen._execute_child

    def execute_or_refuse(self, args, *rest, **kwargs):
        # ctypes.util.find_library asks `ldconfig -p` (engine/cost.py finds libc with it): a lookup
        # of a few milliseconds, not a test starting a program
        if os.path.basename(str(args[0] if isinstance(args, (list, tuple)) else args).split()[0]) != "ldconfig":
            refuse()
        return execute(self, args, *rest, **kwargs)
    monkeypatch.setattr(subprocess.Popen, "_execute_child", execute_or_refuse)
    monkeypatch.setattr(multiprocessing.util, "spawnv_passfds", refuse)
    for name in ("fork", "posix_spawn", "posix_spawnp", "system"):
        monkeypatch.setattr(os, name, refuse)


def fit_batch(model, batch, lr: float, steps: int) -> list[float]:
    """AdamW on the model's parameter groups over one fixed batch; the loss after each step."""
    opt = torch.optim.AdamW([p for ps in model.param_groups().values() for p in ps], lr=lr)
    losses = []
    for _ in range(steps):
        loss, _ = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    """A small random BERT with MiniLM's vocabulary, saved like any checkpoint."""
    d = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
              add_pooling_layer=False).save_pretrained(d)
    load_tokenizer(minilm_dir()).save_pretrained(d)
    return d
