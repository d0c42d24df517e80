"""GLUE tasks, T5-style inputs (local files: glue/<Task>/{train,dev}.tsv; hub: nyu-mll/glue).
Local ids are the 0-based row number in the file (not every file has an index column); hub ids
are its `idx`, the same number."""
from __future__ import annotations

from dataclasses import dataclass

from mmpt.data import metrics as M
from mmpt.data.base import Example, Row, TemplateTask

HUB = "nyu-mll/glue"
ACC = {"acc": M.accuracy}
PAIR = "{name} sentence1: {{sentence1}} sentence2: {{sentence2}}"


def _files(folder: str) -> dict[str, str]:
    return {"train": f"glue/{folder}/train.tsv", "validation": f"glue/{folder}/dev.tsv"}


COLA = TemplateTask(
    name="cola", template="cola sentence: {sentence}",
    verbalizers=["unacceptable", "acceptable"], label_values=["0", "1"], id_field=None,
    tsv_columns=["source", "label", "star", "sentence"],  # CoLA's files have no header
    files=_files("CoLA"), hub=(HUB, "cola"),
    scores={"acc": M.accuracy, "mcc": M.mcc}, main_metric="mcc")

SST2 = TemplateTask(
    name="sst2", template="sst2 sentence: {sentence}",
    verbalizers=["negative", "positive"], label_values=["0", "1"], id_field=None,
    files=_files("SST-2"), hub=(HUB, "sst2"), scores=ACC)

MRPC = TemplateTask(
    name="mrpc", template=PAIR.format(name="mrpc"),
    verbalizers=["not_equivalent", "equivalent"], label_values=["0", "1"], id_field=None,
    fields={"sentence1": "#1 String", "sentence2": "#2 String"}, label_field="Quality",
    hub_fields={"sentence1": "sentence1", "sentence2": "sentence2"},
    files=_files("MRPC"), hub=(HUB, "mrpc"),
    scores={"acc": M.accuracy, "f1": M.binary_f1}, main_metric="f1")

RTE_GLUE = TemplateTask(
    name="rte_glue", template=PAIR.format(name="rte"),
    verbalizers=["entailment", "not_entailment"], label_values=["entailment", "not_entailment"],
    id_field=None, files=_files("RTE"), hub=(HUB, "rte"), scores=ACC)

WNLI = TemplateTask(
    name="wnli", template=PAIR.format(name="wnli"),
    verbalizers=["not_entailment", "entailment"], label_values=["0", "1"], id_field=None,
    files=_files("WNLI"), hub=(HUB, "wnli"), scores=ACC)



@dataclass(kw_only=True, eq=False)
class STSB(TemplateTask):
    """T5 casts STS-B as 26-way classification over scores rounded to 0.2.
    label = index of the score rounded to the nearest 0.2; value = the exact score."""

    def parse(self, row: Row, number: int, hub: bool) -> list[Example]:
        value = row.number("label" if hub else "score", 0.0, 5.0)
        ex_id = str(row.value("idx")) if hub else str(number)
        text = self.template.format(sentence1=row.text("sentence1"), sentence2=row.text("sentence2"))
        # round half to even, like T5's `np.round(score * 5) / 5`; * 5 is exact where / 0.2 is not
        return [Example(ex_id, text, round(value * 5), value=value, task=self.name)]


STSB_TASK = STSB(
    name="stsb", template=PAIR.format(name="stsb"),
    verbalizers=[f"{i / 5:.1f}" for i in range(26)],  # "0.0", "0.2", ..., "5.0"
    label_values=[], id_field=None,
    files=_files("STS-B"), hub=(HUB, "stsb"),
    scores={"acc": M.accuracy, "pearson": M.pearson, "spearman": M.spearman}, main_metric="pearson",
    regression=True)

GLUE_TASKS = [COLA, SST2, MRPC, STSB_TASK, RTE_GLUE, WNLI]
