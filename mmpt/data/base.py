"""The pieces every task is made of: `Example`, `Row` (a raw record that knows where it came
from, so each parse error names file, line and field) and the `Task` base class."""
from __future__ import annotations

import abc
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mmpt.data import loading
from mmpt.errors import DataError

Metric = Callable[[list[int], list["Example"], list[str]], float]


@dataclass
class Example:
    id: str
    text: str  # the formatted text-to-text source
    label: int  # index of the gold verbalizer
    group: str | None = None  # MultiRC: "{passage}-{question}", the unit of exact match
    value: float | None = None  # STS-B: the gold similarity score
    task: str = ""


class Row:
    """A raw record (dict) plus its file and line. Accessors raise DataError naming the field by
    its full path (e.g. `passage.questions[2].answers[0].label`)."""

    def __init__(self, data: Any, path, line: int | None, prefix: str = ""):
        self.data, self.path, self.line, self.prefix = data, path, line, prefix

    def _error(self, name: str, message: str) -> DataError:
        return DataError(self.path, message, line=self.line, field=self.prefix + name)

    def value(self, name: str) -> Any:
        value = self.data.get(name) if isinstance(self.data, dict) else None
        if value is None:
            raise self._error(name, "missing; every record needs this field")
        return value

    def text(self, name: str) -> str:
        value = self.value(name)
        if not isinstance(value, str):  # empty text is allowed: some MultiRC answers are ""
            raise self._error(name, f"expected text, got {value!r}")
        return value

    def label(self, name: str, allowed: list) -> int:
        """Index of the raw value in `allowed` (the task's raw labels in verbalizer order)."""
        value = self.value(name)
        for i, candidate in enumerate(allowed):
            # type check too: JSON `1` must not match `true`, nor `"1"` match `1`
            if type(value) is type(candidate) and value == candidate:
                return i
        raise self._error(name, f"expected one of {allowed}, got {value!r}")

    def number(self, name: str, low: float, high: float) -> float:
        value = self.value(name)
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if not low <= number <= high:  # also false for NaN
            raise self._error(name, f"expected a number in [{low}, {high}], got {value!r}")
        return number

    def sub(self, name: str) -> Row:
        value = self.value(name)
        if not isinstance(value, dict):
            raise self._error(name, f"expected an object, got {value!r}")
        return Row(value, self.path, self.line, f"{self.prefix}{name}.")

    def items(self, name: str) -> list[Row]:
        value = self.value(name)
        if not isinstance(value, list) or not value:
            raise self._error(name, f"expected a non-empty list, got {value!r}")
        return [Row(v, self.path, self.line, f"{self.prefix}{name}[{i}].") for i, v in enumerate(value)]


@dataclass(kw_only=True, eq=False)
class Task(abc.ABC):
    """One benchmark task: where its files are, how a raw row becomes Examples, the
    verbalizers (target strings, in label-index order) and the metrics.

    Subclasses implement `parse(row, number, hub)`; `number` is the 0-based record number in the
    file (GLUE ids), `hub` says the row comes from the hub's parquet copy (int labels, sometimes
    other field names) rather than the local release files."""

    name: str
    verbalizers: list[str]
    files: dict[str, str]  # split ("train" / "validation") -> path relative to data_dir
    hub: tuple[str, str]  # (hub repo, config name)
    scores: dict[str, Metric]  # output key -> metric function
    main_metric: str = "acc"
    tsv_columns: list[str] | None = None  # for header-less TSV files (CoLA)
    regression: bool = False  # verbalizers are numbers (STS-B): encoder backbones regress them

    @abc.abstractmethod
    def parse(self, row: Row, number: int, hub: bool) -> list[Example]:
        """The Examples of one raw record (MultiRC: one per answer option)."""

    def read(self, split: str, data_dir: str | Path | None) -> list[Example]:
        """Examples of an official split: "train" or "validation"."""
        if split not in ("train", "validation"):
            raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
        if data_dir is None:
            where = f"hub:{self.hub[0]}/{self.hub[1]}[{split}]"
            records = [(None, r) for r in loading.read_hub(*self.hub, split)]
        else:
            where = Path(data_dir) / self.files[split]
            if not where.is_file():
                what = "training" if split == "train" else "validation"
                raise DataError(where, f"no {what} file for task `{self.name}`; expected it at this path")
            if where.suffix == ".tsv":
                records = loading.read_tsv(where, self.tsv_columns)
            else:
                records = loading.read_jsonl(where)
        examples, seen = [], set()
        for number, (line, record) in enumerate(records):
            for ex in self.parse(Row(record, where, line), number, hub=data_dir is None):
                if ex.id in seen:  # ids key predictions and resume; they must be unique
                    raise DataError(where, f"duplicate example id {ex.id!r}", line=line)
                seen.add(ex.id)
                examples.append(ex)
        return examples

    def metrics(self, pred: list[int], examples: list[Example]) -> dict[str, float]:
        if len(pred) != len(examples):
            raise ValueError(f"{len(pred)} predictions for {len(examples)} examples")
        return {key: float(fn(list(pred), examples, self.verbalizers)) for key, fn in self.scores.items()}

    def holdout_key(self, ex: Example) -> tuple[Any, str]:
        """(stratum, unit) for carving val out of train: units are held out whole, in equal
        shares of each stratum. Default: single examples, stratified by label."""
        return ex.label, ex.id


@dataclass(kw_only=True, eq=False)
class TemplateTask(Task):
    """A task whose source is `template` filled with text fields of one row, e.g. RTE."""

    template: str
    label_values: list  # raw label values of the local files, in verbalizer order
    fields: dict[str, str] = field(default_factory=dict)  # placeholder -> local field ("a.b" nests)
    hub_fields: dict[str, str] = field(default_factory=dict)  # placeholder -> hub field
    id_field: str | None = "idx"  # local id field; None: the record number (GLUE)
    label_field: str = "label"

    def __post_init__(self):
        # placeholders not renamed read the field of the same name
        for placeholder in (p for _, p, _, _ in string.Formatter().parse(self.template) if p):
            self.fields.setdefault(placeholder, placeholder)
            self.hub_fields.setdefault(placeholder, self.fields[placeholder])

    def parse(self, row: Row, number: int, hub: bool) -> list[Example]:
        args = {}
        for placeholder, name in (self.hub_fields if hub else self.fields).items():
            *parents, leaf = name.split(".")
            node = row
            for parent in parents:
                node = node.sub(parent)
            args[placeholder] = node.text(leaf)
        if hub:  # the hub stores labels as ints in verbalizer order, always under `label`
            label = row.label("label", list(range(len(self.verbalizers))))
            ex_id = str(row.value("idx"))
        else:
            label = row.label(self.label_field, self.label_values)
            ex_id = str(row.value(self.id_field)) if self.id_field else str(number)
        return [Example(ex_id, self.template.format(**args), label, task=self.name)]
