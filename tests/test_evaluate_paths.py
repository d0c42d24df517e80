"""mmpt.evaluate beyond the agreement matrix: plain lm_eval on PEFT exports gives the same
log-likelihoods; a multi-task poly run scores with the routing of the task it is given; --base
scores the backbone alone; rolling log-likelihood and generation over a task YAML of our own."""
import json
import shutil

import pytest
import torch
from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager

from evaluate_helpers import lls, mmpt_scores, runs, samples, train_run  # noqa: F401  (runs: a fixture)
from mmpt.evaluate import TASKS_DIR
from mmpt.evaluate.__main__ import main, task_manager
from mmpt.evaluate.lm import MmptLM
from mmpt.export.__main__ import export
from mmpt.runs import load_model, open_run


@pytest.mark.parametrize("method", ["lora", "ia3", "prompt_tuning", "prefix"])
def test_plain_lm_eval_on_the_peft_export_agrees(runs, method, tmp_path):
    run = runs("llama", method)
    peft_dir = export(run, "peft", tmp_path / "peft")
    base = str(peft_dir / "base_model")
    ours = simple_evaluate(model=MmptLM.from_run(run), tasks=["mmpt_cb"], log_samples=True,
                           task_manager=task_manager([], ["mmpt_cb"], run))
    # what `lm_eval --model hf --model_args pretrained=..,peft=..,add_bos_token=False --include_path
    # <tasks dir> --metadata '{"mmpt_max_length": 48}'` builds (its model_args become the metadata)
    meta = {"pretrained": base, "peft": str(peft_dir), "add_bos_token": False, "mmpt_max_length": 48}
    plain = simple_evaluate(model="hf", model_args={k: meta[k] for k in ("pretrained", "peft", "add_bos_token")},
                            tasks=["mmpt_cb"], log_samples=True, batch_size=8, device="cpu",
                            task_manager=TaskManager(include_path=[str(TASKS_DIR)], include_defaults=False, metadata=meta))
    a, b = ([lls(r) for r in sorted(x["samples"]["mmpt_cb"], key=lambda r: r["doc_id"])] for x in (ours, plain))
    assert len(a) == len(b) == 56
    assert torch.tensor(a).sub(torch.tensor(b)).abs().max() < 1e-4
    assert ours["results"]["mmpt_cb"]["acc,none"] == plain["results"]["mmpt_cb"]["acc,none"]


@pytest.fixture(scope="module")
def poly_mix(tmp_path_factory):
    """A poly_lora run on two tasks (rte, cb), routing by task."""
    out = tmp_path_factory.mktemp("poly_mix") / "run"
    return train_run(out, ["model=llama_tiny", "method=poly_lora", "dataset=glue_mix", "dataset.tasks=[rte,cb]",
                           "dataset.max_eval_per_task=8", "dataset.max_length=48", "method.n_skills=2",
                           "optimizer.groups.routing.lr=0.5", "optimizer.groups.adapters.lr=0.1",
                           "trainer.max_steps=4", "trainer.eval_every=4",
                           "trainer.batch_size=4"])


def test_a_multi_task_poly_run_scores_with_the_routing_of_the_named_task(poly_mix, capsys):
    assert main([str(poly_mix), "--tasks", "mmpt_cb", "--limit", "12", "--log-samples", "--task-id", "cb"]) == 0
    got = torch.tensor([lls(r) for r in samples(poly_mix, "mmpt_cb")])
    model = load_model(open_run(poly_mix))
    own = mmpt_scores(model, "cb", 12, 1, 48)  # cb is task id 1 of [rte, cb]
    other = mmpt_scores(model, "cb", 12, 0, 48)
    assert (own - other).abs().max() > 1e-3  # the two tasks' routings give other scores
    assert (got - own).abs().max() < 1e-4


def test_a_multi_task_poly_run_needs_a_task_it_has(poly_mix, capsys):
    assert main([str(poly_mix), "--tasks", "mmpt_cb"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--task-id" in err and "rte, cb" in err
    assert main([str(poly_mix), "--tasks", "mmpt_cb", "--task-id", "wic"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no task 'wic'" in err and "rte, cb" in err
    assert not (poly_mix / "eval" / "results.json").exists() or "mmpt_cb" in json.loads(
        (poly_mix / "eval" / "results.json").read_text())["results"]


def test_base_scores_the_backbone_alone(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs("llama", "lora"), run)
    shutil.rmtree(run / "eval", ignore_errors=True)
    assert main([str(run), "--tasks", "mmpt_cb", "--limit", "10", "--base", "--log-samples"]) == 0
    assert (run / "eval" / "base_results.json").exists() and not (run / "eval" / "results.json").exists()
    got = torch.tensor([lls(r) for r in samples(run, "mmpt_cb", base=True)])
    model = load_model(open_run(run))
    tuned = mmpt_scores(model, "cb", 10, 0, 48)
    for group in model.param_groups().values():  # LoRA with A = B = 0 adds nothing: the backbone alone
        for p in group:
            p.data.zero_()
    assert (got - mmpt_scores(model, "cb", 10, 0, 48)).abs().max() < 1e-5
    assert (got - tuned).abs().max() > 1e-4


ROLLING = """task: own_rolling
dataset_path: json
dataset_kwargs:
  data_files: {data}
test_split: train
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
"""
GENERATE = """task: own_generate
dataset_path: json
dataset_kwargs:
  data_files: {data}
test_split: train
output_type: generate_until
doc_to_text: "{{{{text}}}}"
doc_to_target: "x"
generation_kwargs:
  until: ["zzz"]
  max_gen_toks: 5
metric_list:
  - metric: exact_match
"""


@pytest.fixture
def own_tasks(tmp_path):
    data = tmp_path / "docs.jsonl"
    texts = ["the cat sat on the mat", "birds fly south in the winter and come back in spring"]
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "rolling.yaml").write_text(ROLLING.format(data=data))
    (tmp_path / "tasks" / "generate.yaml").write_text(GENERATE.format(data=data))
    return tmp_path / "tasks", texts


@pytest.mark.parametrize("backbone", ["gpt2", "t5"])
def test_rolling_loglikelihood_and_generation_by_hand(runs, backbone, own_tasks):
    folder, texts = own_tasks
    run = runs(backbone, "full")  # method=full: the backbone's own forward is the whole model
    lm = MmptLM.from_run(run)
    out = simple_evaluate(model=lm, tasks=["own_rolling", "own_generate"], log_samples=True,
                          task_manager=TaskManager(include_path=[str(folder)], include_defaults=False))
    model, tok = lm.model, lm.tok
    eos = tok.eos_token_id
    rolling = sorted(out["samples"]["own_rolling"], key=lambda r: r["doc_id"])
    for row, text in zip(rolling, texts):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            if backbone == "t5":  # seq2seq: the EOS prefix to the encoder, the text the decoder's target
                logits = model.backbone(input_ids=torch.tensor([[eos]]), labels=torch.tensor([ids])).logits[0]
                want = logits.log_softmax(-1)[torch.arange(len(ids)), ids].sum()
            else:
                logits = model.backbone(input_ids=torch.tensor([[eos] + ids])).logits[0, :-1]
                want = logits.log_softmax(-1)[torch.arange(len(ids)), ids].sum()
        assert float(row["resps"][0][0]) == pytest.approx(float(want), abs=1e-4)
    generated = sorted(out["samples"]["own_generate"], key=lambda r: r["doc_id"])
    for row, text in zip(generated, texts):
        ctx = (tok(text, add_special_tokens=False)["input_ids"] + ([eos] if backbone == "t5" else []))
        with torch.no_grad():
            if backbone == "t5":
                ids = model.backbone.generate(input_ids=torch.tensor([ctx]), max_new_tokens=5, do_sample=False)[0, 1:]
            else:
                ids = model.backbone.generate(input_ids=torch.tensor([ctx]), max_new_tokens=5, do_sample=False,
                                              pad_token_id=model.pad_id)[0, len(ctx):]
        assert row["resps"][0][0] == tok.decode(ids, skip_special_tokens=True)
