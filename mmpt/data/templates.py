"""promptsource (T0-style) prompts for the GLUE / SuperGLUE tasks: `dataset.format=promptsource`.

Each example gets one template drawn at random (seeded); its answer choices become the example's
verbalizers for rank classification (they can differ per example, e.g. COPA's two sentences).
Templates read the hub's record schema, so the local release files are mapped onto it first
(`hub_records`). Only templates of the original task that have answer choices are used.

promptsource compiles a template's Jinja text on every `apply`, about 1 ms per example; here each
template is compiled once with promptsource's own Jinja environment (its filters included), which
is what makes rendering ~100k training examples take seconds (tests check the output equals
`Template.apply`).
"""
from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmpt.data import loading
from mmpt.data.base import Example, Row, TemplateTask
from mmpt.data.superglue import clean_paragraph
from mmpt.data.tasks import get_task
from mmpt.errors import ConfigError, DataError, MMPTError

# mmpt task -> promptsource (dataset, subset)
SOURCES = {"cola": ("glue", "cola"), "sst2": ("glue", "sst2"), "mrpc": ("glue", "mrpc"),
           "wnli": ("glue", "wnli"), "rte_glue": ("glue", "rte"), "rte": ("super_glue", "rte"),
           "cb": ("super_glue", "cb"), "copa": ("super_glue", "copa"), "wic": ("super_glue", "wic"),
           "wsc": ("super_glue", "wsc.fixed"), "multirc": ("super_glue", "multirc"),
           "boolq": ("super_glue", "boolq")}


@dataclass
class PromptedExample(Example):
    choices: list[str] = field(default_factory=list)  # this example's answer choices, label-indexed
    template: str = ""  # the promptsource template's name


@dataclass
class Compiled:
    name: str
    prompt: object  # jinja2 Template of the whole text (prompt ||| target)
    choices: object  # jinja2 Template of the answer choices

    def render(self, record: dict) -> tuple[str, str, list[str]]:
        choices = [c.strip() for c in self.choices.render(**record).split("|||")]
        parts = [p.strip() for p in self.prompt.render(**record, answer_choices=choices).split("|||")]
        return parts[0], (parts[1] if len(parts) > 1 else ""), choices


def _promptsource():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # promptsource imports the deprecated pkg_resources
            from promptsource import templates
    except ImportError as e:
        raise MMPTError("dataset.format=promptsource needs the promptsource package "
                        f"(scripts/install.sh installs it): {e}") from None
    return templates


def template_names(task_name: str) -> list[str]:
    """Names of the usable templates of a task, sorted (their order defines template task ids)."""
    return [c.name for c in compiled_templates(task_name)]


def raw_templates(task_name: str) -> list:
    """promptsource Template objects of the original task with answer choices, sorted by name."""
    if task_name not in SOURCES:
        raise ConfigError("dataset.format", f"task {task_name!r} has no promptsource templates with "
                          f"answer choices (those that have: {sorted(SOURCES)}); use format: fixed")
    ps = _promptsource()
    found = ps.DatasetTemplates(*SOURCES[task_name]).templates.values()
    usable = [t for t in found if t.metadata.original_task and t.answer_choices]
    return sorted(usable, key=lambda t: t.name)


def compiled_templates(task_name: str) -> list[Compiled]:
    env = _promptsource().env
    return [Compiled(t.name, env.from_string(t.jinja), env.from_string(t.get_answer_choices_expr()))
            for t in raw_templates(task_name)]


def _flat(record: dict) -> dict:
    """Nested objects merged into the top level (WSC's `target.span1_text` -> `span1_text`)."""
    out = {}
    for key, value in record.items():
        out.update(_flat(value) if isinstance(value, dict) else {key: value})
    return out


def _get(record: dict, path: str):
    for part in path.split("."):
        record = record[part]
    return record


def hub_records(task_name: str, split: str, data_dir) -> dict[str, dict]:
    """{example id: record in the hub's schema} for an official split ("train" / "validation")."""
    task = get_task(task_name)
    if data_dir is None:  # hub rows already have the schema the templates expect
        records, where, hub = [(None, r) for r in loading.read_hub(*task.hub, split)], "hub", True
    else:
        where, hub = Path(data_dir) / task.files[split], False
        if not where.is_file():
            raise DataError(where, f"no {split} file for task `{task_name}`")
        records = (loading.read_tsv(where, task.tsv_columns) if where.suffix == ".tsv"
                   else loading.read_jsonl(where))
    out = {}
    for number, (line, record) in enumerate(records):
        examples = task.parse(Row(record, where, line), number, hub=hub)
        if hub:
            out.update({ex.id: {**record, "label": ex.label} for ex in examples})
        elif task_name == "multirc":  # one record per answer option, like the hub's flat rows
            out.update(_multirc(record))
        else:
            out[examples[0].id] = _local_to_hub(task, record, examples[0], number)
    return out


def _local_to_hub(task: TemplateTask, record: dict, ex: Example, number: int) -> dict:
    out = _flat(record)
    for placeholder, local in task.fields.items():  # renamed fields, e.g. MRPC's "#1 String"
        out[task.hub_fields[placeholder]] = _get(record, local)
    idx = out.get("idx", number)
    out.update(label=ex.label, idx=int(idx) if str(idx).isdigit() else idx)
    return out


def _multirc(record: dict) -> dict[str, dict]:
    passage, out = record["passage"], {}
    paragraph = clean_paragraph(passage["text"])
    for q in passage["questions"]:
        for a in q["answers"]:
            ids = {"paragraph": record["idx"], "question": q["idx"], "answer": a["idx"]}
            out[f"{record['idx']}-{q['idx']}-{a['idx']}"] = {
                "paragraph": paragraph, "question": q["question"], "answer": a["text"],
                "label": int(a["label"]), "idx": ids}
    return out


def render(examples: list[Example], records: dict[str, dict], templates: list[Compiled],
           seed: int, salt: str = "") -> list[PromptedExample]:
    """Each example with a template drawn by a generator seeded with (seed, salt). A template that
    does not render for an example (empty prompt, or a target that is not its answer choice)
    is skipped for it in favour of the next one; an example no template renders is an error."""
    rng = np.random.default_rng([seed, zlib.crc32(salt.encode())])
    draws = rng.integers(len(templates), size=len(examples))
    out = []
    for ex, first in zip(examples, draws):
        record = records[ex.id]
        for k in range(len(templates)):
            template = templates[(first + k) % len(templates)]
            prompt, target, choices = template.render(record)
            if prompt and ex.label < len(choices) and target == choices[ex.label]:
                out.append(PromptedExample(**{**vars(ex), "text": prompt}, choices=choices,
                                           template=template.name))
                break
        else:
            raise DataError(f"{ex.task} example {ex.id}", "no promptsource template renders it")
    return out


def prompt_splits(task_name: str, splits: dict[str, list[Example]], data_dir, seed: int) -> dict:
    """The splits of `load_splits` with every example rendered by a random template. val comes from
    the official train file (as in load_splits), test from the official validation file."""
    templates = compiled_templates(task_name)
    train = hub_records(task_name, "train", data_dir) if set(splits) - {"test"} else {}
    files = {"train": train, "val": train}
    if "test" in splits:
        files["test"] = hub_records(task_name, "validation", data_dir)
    return {split: render(examples, files[split], templates, seed, f"{task_name}/{split}")
            for split, examples in splits.items()}
