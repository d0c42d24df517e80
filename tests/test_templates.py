"""promptsource templates: every template a mixture uses renders for its task's examples, exactly
as promptsource's own `Template.apply` would, from the local files mapped onto the hub schema."""
import warnings
from collections import Counter

import pytest
import yaml

from conftest import DATA, ROOT
from mmpt.data import get_task, load_splits
from mmpt.data.templates import compiled_templates, hub_records, raw_templates, render
from mmpt.errors import ConfigError

MIX = yaml.safe_load((ROOT / "conf" / "dataset" / "glue_superglue_mix.yaml").read_text())["tasks"]
HELD_OUT = ["rte", "rte_glue", "cb", "copa", "wic"]


def first(task_name, n, split="train"):
    examples = get_task(task_name).read(split, DATA)
    return examples[:n], hub_records(task_name, split, DATA)


@pytest.mark.parametrize("task_name", MIX + HELD_OUT)
def test_every_template_renders_its_tasks_examples_like_promptsource(task_name):
    task = get_task(task_name)
    examples, records = first(task_name, 20)
    templates = compiled_templates(task_name)
    assert len(templates) >= 5
    for template, original in zip(templates, raw_templates(task_name)):
        rendered = 0
        for ex in examples:
            prompt, target, choices = template.render(records[ex.id])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                expected = original.apply(records[ex.id], truncate=False)
            assert [prompt, target][:len(expected)] == expected, (template.name, ex.id)
            assert choices == original.get_answer_choices_list(records[ex.id])
            assert len(choices) == len(task.verbalizers), template.name
            if prompt:  # COPA has templates for "effect" questions only (and for "cause" only)
                assert target == choices[ex.label], (template.name, ex.id)
                rendered += 1
        # a template of a pre-training task renders every example; a conditional one at least some
        assert rendered == len(examples) if task_name in MIX else rendered > 0, template.name


@pytest.mark.parametrize("task_name", MIX + HELD_OUT)
def test_rendered_splits_keep_labels_and_use_every_template(task_name):
    splits = load_splits(task_name, DATA, seed=0, val_fraction=0.1)
    examples, records = splits["train"][:300], hub_records(task_name, "train", DATA)
    prompted = render(examples, records, compiled_templates(task_name), seed=0, salt="x")
    assert [p.id for p in prompted] == [e.id for e in examples]
    assert [p.label for p in prompted] == [e.label for e in examples]
    assert all(p.text and p.text != e.text for p, e in zip(prompted, examples))
    used = Counter(p.template for p in prompted)
    assert len(used) == len(raw_templates(task_name))  # 300 draws cover every template
    again = render(examples, records, compiled_templates(task_name), seed=0, salt="x")
    other = render(examples, records, compiled_templates(task_name), seed=1, salt="x")
    assert [p.template for p in again] == [p.template for p in prompted]
    assert [p.template for p in other] != [p.template for p in prompted]


def test_local_records_carry_the_hub_fields():
    (mrpc, *_), records = first("mrpc", 1)
    assert {"sentence1", "sentence2", "label", "idx"} <= set(records[mrpc.id])
    assert records[mrpc.id]["sentence1"] in mrpc.text and records[mrpc.id]["label"] == mrpc.label
    (wsc, *_), records = first("wsc", 1)
    assert {"span1_text", "span2_text", "span1_index", "span2_index", "text"} <= set(records[wsc.id])
    multirc, records = first("multirc", 3)
    for ex in multirc:
        assert records[ex.id]["answer"] in ex.text and records[ex.id]["label"] == ex.label


def test_a_task_without_templates_is_a_config_error():
    with pytest.raises(ConfigError, match="dataset.format"):
        compiled_templates("stsb")
