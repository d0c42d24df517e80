"""SuperGLUE tasks (local files: superglue/<Task>/{train,val}.jsonl; hub: aps/super_glue).
The official test files have no labels and are not read."""
from __future__ import annotations

import re
from dataclasses import dataclass

from mmpt.data import metrics as M
from mmpt.data.base import Example, Row, Task, TemplateTask

ACC = {"acc": M.accuracy}
FALSE_TRUE = ["False", "True"]
HUB = "aps/super_glue"


def _files(folder: str) -> dict[str, str]:
    return {"train": f"superglue/{folder}/train.jsonl", "validation": f"superglue/{folder}/val.jsonl"}


BOOLQ = TemplateTask(
    name="boolq", template="boolq passage: {passage} question: {question}",
    verbalizers=FALSE_TRUE, label_values=[False, True],
    files=_files("BoolQ"),  # the offline copy has no train.jsonl: reading train raises DataError
    hub=(HUB, "boolq"), scores=ACC)

CB = TemplateTask(
    name="cb", template="cb hypothesis: {hypothesis}. premise: {premise}",
    verbalizers=["entailment", "contradiction", "neutral"],
    label_values=["entailment", "contradiction", "neutral"],
    files=_files("CB"), hub=(HUB, "cb"), scores={"acc": M.accuracy, "f1": M.macro_f1})

COPA = TemplateTask(
    name="copa", template="choice1: {choice1} choice2: {choice2} premise: {premise} question: {question}",
    verbalizers=["choice1", "choice2"], label_values=[0, 1],
    files=_files("COPA"), hub=(HUB, "copa"), scores=ACC)

RTE = TemplateTask(
    name="rte", template="rte sentence1: {premise} sentence2: {hypothesis}",
    verbalizers=["entailment", "not_entailment"], label_values=["entailment", "not_entailment"],
    files=_files("RTE"), hub=(HUB, "rte"), scores=ACC)

WIC = TemplateTask(
    name="wic", template="wic sentence1: {sentence1} sentence2: {sentence2} word: {word}",
    verbalizers=FALSE_TRUE, label_values=[False, True],
    files=_files("WiC"), hub=(HUB, "wic"), scores=ACC)

WSC = TemplateTask(
    name="wsc", template="wsc text: {text} span1: {span1} span2: {span2}",
    verbalizers=FALSE_TRUE, label_values=[False, True],
    # the release nests the spans under `target`; the hub has them flat
    fields={"span1": "target.span1_text", "span2": "target.span2_text"},
    hub_fields={"span1": "span1_text", "span2": "span2_text"},
    files=_files("WSC"), hub=(HUB, "wsc.fixed"), scores=ACC)

_MARKUP = re.compile(r"<br\s*/?>|</?b>", re.IGNORECASE)


def clean_paragraph(text: str) -> str:
    """Drop MultiRC's HTML markup (`<br>` between sentences, `<b>Sent 1: </b>` labels)."""
    return " ".join(_MARKUP.sub(" ", text).split())


@dataclass(kw_only=True, eq=False)
class MultiRC(Task):
    """One Example per answer option: `question: {q} answer: {a}. paragraph: {p}` -> False/True.
    id = "{passage}-{question}-{answer}", group = "{passage}-{question}" (the EM unit)."""

    def _example(self, ids: tuple, question: str, answer: str, paragraph: str, label: int) -> Example:
        text = f"question: {question} answer: {answer}. paragraph: {paragraph}"
        return Example("-".join(map(str, ids)), text, label, group=f"{ids[0]}-{ids[1]}", task=self.name)

    def parse(self, row: Row, number: int, hub: bool) -> list[Example]:
        if hub:  # flat: one row per answer option, ids under `idx`
            idx = row.sub("idx")
            ids = (idx.value("paragraph"), idx.value("question"), idx.value("answer"))
            return [self._example(ids, row.text("question"), row.text("answer"),
                                  clean_paragraph(row.text("paragraph")), row.label("label", [0, 1]))]
        passage = row.sub("passage")
        paragraph, examples = clean_paragraph(passage.text("text")), []
        for question in passage.items("questions"):
            for answer in question.items("answers"):
                ids = (row.value("idx"), question.value("idx"), answer.value("idx"))
                examples.append(self._example(ids, question.text("question"), answer.text("text"),
                                              paragraph, answer.label("label", [0, 1])))
        return examples

    def holdout_key(self, ex: Example) -> tuple[int, str]:
        # options of one passage share its text and questions: hold out whole passages (one
        # stratum), or val would test on passages seen in training
        return 0, ex.id.split("-")[0]


MULTIRC = MultiRC(
    name="multirc", verbalizers=FALSE_TRUE, files=_files("MultiRC"), hub=(HUB, "multirc"),
    scores={"acc": M.accuracy, "f1a": M.binary_f1, "em": M.exact_match}, main_metric="f1a")

SUPERGLUE_TASKS = [BOOLQ, CB, COPA, MULTIRC, RTE, WIC, WSC]
