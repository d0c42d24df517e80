"""python -m mmpt.evaluate on finetune.py runs: a poly_lora run pre-trained on a mixture and fine-tuned
on CB (Poly: the new task's routing row) and an Arrow run over a library of LoRA experts. On mmpt_cb
lm-eval's choice is the run's prediction on every example, its log-likelihoods the scores of the
model the run itself scored (kept from its final evaluation, not rebuilt), its acc the run's."""
import copy
import json

import pytest
from omegaconf import OmegaConf

from conftest import compose_cfg
from evaluate_helpers import agree, train_run
from mmpt.evaluate.__main__ import main
from mmpt.evaluate.load import open_model
from mmpt.recipes import common, finetune

CB_ARGS = ["dataset=cb", "dataset.max_length=48", "trainer.max_steps=2", "trainer.eval_every=2",
           "trainer.batch_size=4", "seed=0"]


def finetune_run(out, args, monkeypatch) -> tuple:
    """(run folder, the model its final evaluation scored) of finetune() as finetune.py runs it."""
    scored = {}

    def keep(model, *rest, **kw):
        scored["model"] = copy.deepcopy(model).eval()  # as evaluate() scores it
        return final_eval(model, *rest, **kw)

    final_eval = common.final_eval
    monkeypatch.setattr(common, "final_eval", keep)
    cfg = compose_cfg(args, config_name="finetune", run_dir=out)
    (out / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
    finetune(cfg)
    return out, scored["model"]


def scored_on_cb(folder, capsys):
    assert main([str(folder), "--tasks", "mmpt_cb", "--log-samples", "--batch-size", "8"]) == 0
    assert "mmpt_cb" in capsys.readouterr().out  # lm-eval's table (a run) or its line (a sweep)


def refused(argv, capsys, want: str):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and want in err, err


def test_a_poly_run_fine_tuned_on_cb_scores_with_its_new_row(tmp_path, monkeypatch, capsys):
    pre = train_run(tmp_path / "pre", ["model=llama_tiny", "method=poly_lora", "method.n_skills=2",
                                       "dataset=glue_superglue_mix", "dataset.tasks=[wnli,wsc]",
                                       "trainer.max_steps=2", "trainer.eval_every=2", "trainer.batch_size=4",
                                       "optimizer.groups.adapters.lr=0.05"])
    run, model = finetune_run(tmp_path / "fine", [f"pretrained={pre}", "finetune_type=Poly", "k_shot=8",
                                                  "optimizer.groups.adapters.lr=0.05",
                                                  "optimizer.groups.routing.lr=0.5", *CB_ARGS], monkeypatch)
    assert open_model(run)[1] == 2  # the row Poly appended after the mixture's two tasks
    scored_on_cb(run, capsys)
    agree(run, model=model, task_id=2)
    before = sorted(p.stat().st_mtime_ns for p in run.rglob("*"))
    refused([str(run), "--tasks", "mmpt_cb", "--task-id", "wnli"], capsys, "finetune.py run of the one task 'cb'")
    pre.rename(tmp_path / "moved")
    refused([str(run), "--tasks", "mmpt_cb"], capsys, f"pretrained={pre}: no .hydra/config.yaml")
    assert sorted(p.stat().st_mtime_ns for p in run.rglob("*")) == before  # nothing written


def test_an_arrow_library_run_scores_as_it_routed(tmp_path, monkeypatch, capsys):
    from mmpt.library.extract import build
    from test_library import make_run

    experts = tmp_path / "experts"
    for n, task in enumerate(["cb", "rte", "wnli"]):
        make_run(experts / str(n), "lora", task)
    lib = build(tmp_path / "lib", [experts])
    run, model = finetune_run(tmp_path / "sweep" / "arrow", [f"library={lib}", "finetune_type=arrow", "experts.top_k=1",
                                                   "k_shot=4", *CB_ARGS], monkeypatch)
    assert not (run / "checkpoints").exists()  # arrow trains nothing on T5: no checkpoint, the model as built
    scored_on_cb(run.parent, capsys)  # as a sweep: a finetune.py run without checkpoints/best is no skip
    agree(run, model=model, task_id=0)
    assert main([str(run), "--tasks", "mmpt_cb", "--base", "--limit", "3"]) == 0  # the library's backbone alone
    assert "mmpt_cb" in json.loads((run / "eval" / "base_results.json").read_text())["results"]
