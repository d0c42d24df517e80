"""Every task's reader and formatter: hand-written rows in tmp files (local layout), hand-written
hub rows (hub layout, int labels), and the real files in ../shared/data."""
import json
from collections import Counter
from pathlib import Path

import pytest

from mmpt.data.base import Row
from mmpt.data.splits import resolve_data_dir
from mmpt.data.tasks import TASKS, get_task
from mmpt.errors import ConfigError

REAL = resolve_data_dir(None)
needs_real = pytest.mark.skipif(REAL is None or not Path(REAL, "superglue").is_dir(),
                                reason="no local copy of the benchmark data")


def write(root: Path, rel: str, rows) -> Path:
    """rows: dicts -> jsonl; str -> written as is (tsv)."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(rows if isinstance(rows, str) else "".join(json.dumps(r) + "\n" for r in rows))
    return path


# task -> (validation file, its content, expected [(id, text, label)])
LOCAL = {
    "boolq": ("superglue/BoolQ/val.jsonl",
              [{"question": "is it", "passage": "It is.", "idx": 4, "label": True},
               {"question": "is it not", "passage": "It is.", "idx": 5, "label": False}],
              [("4", "boolq passage: It is. question: is it", 1),
               ("5", "boolq passage: It is. question: is it not", 0)]),
    "cb": ("superglue/CB/val.jsonl",
           [{"premise": "P a.", "hypothesis": "h a", "label": "entailment", "idx": 0},
            {"premise": "P b.", "hypothesis": "h b", "label": "contradiction", "idx": 1},
            {"premise": "P c.", "hypothesis": "h c", "label": "neutral", "idx": 2}],
           [("0", "cb hypothesis: h a. premise: P a.", 0), ("1", "cb hypothesis: h b. premise: P b.", 1),
            ("2", "cb hypothesis: h c. premise: P c.", 2)]),
    "copa": ("superglue/COPA/val.jsonl",
             [{"premise": "P.", "choice1": "A.", "choice2": "B.", "question": "cause", "label": 1, "idx": 9}],
             [("9", "choice1: A. choice2: B. premise: P. question: cause", 1)]),
    "rte": ("superglue/RTE/val.jsonl",
            [{"premise": "P.", "hypothesis": "H.", "label": "not_entailment", "idx": 3}],
            [("3", "rte sentence1: P. sentence2: H.", 1)]),
    "wic": ("superglue/WiC/val.jsonl",
            [{"word": "bank", "sentence1": "S1.", "sentence2": "S2.", "idx": 0, "label": True, "start1": 0}],
            [("0", "wic sentence1: S1. sentence2: S2. word: bank", 1)]),
    "wsc": ("superglue/WSC/val.jsonl",
            [{"text": "Tom said he left.", "target": {"span1_text": "Tom", "span2_text": "he",
                                                       "span1_index": 0, "span2_index": 2},
              "idx": 1, "label": False}],
            [("1", "wsc text: Tom said he left. span1: Tom span2: he", 0)]),
    "multirc": ("superglue/MultiRC/val.jsonl",
                [{"idx": 7, "version": 1.1, "passage": {
                    "text": "<b>Sent 1: </b>A cat sat.<br><b>Sent 2: </b>It slept.<br>",
                    "questions": [{"question": "What sat?", "idx": 20, "answers": [
                        {"text": "A cat", "idx": 100, "label": 1}, {"text": "A dog", "idx": 101, "label": 0}]},
                        {"question": "Did it sleep?", "idx": 21, "answers": [
                            {"text": "", "idx": 102, "label": 1}]}]}}],
                [("7-20-100", "question: What sat? answer: A cat. paragraph: Sent 1: A cat sat. Sent 2: It slept.", 1),
                 ("7-20-101", "question: What sat? answer: A dog. paragraph: Sent 1: A cat sat. Sent 2: It slept.", 0),
                 ("7-21-102", "question: Did it sleep? answer: . paragraph: Sent 1: A cat sat. Sent 2: It slept.", 1)]),
    "cola": ("glue/CoLA/dev.tsv", "gj04\t1\t\tThe cat sat.\ngj04\t0\t*\tCat the sat.\n",
             [("0", "cola sentence: The cat sat.", 1), ("1", "cola sentence: Cat the sat.", 0)]),
    "sst2": ("glue/SST-2/dev.tsv", "sentence\tlabel\ngood \" fun \t1\nNA\t0\n",
             [("0", 'sst2 sentence: good " fun ', 1), ("1", "sst2 sentence: NA", 0)]),
    "mrpc": ("glue/MRPC/dev.tsv",
             "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t11\t12\tA b .\tC d .\n1\t13\t14\tE .\tF .\n",
             [("0", "mrpc sentence1: A b . sentence2: C d .", 0), ("1", "mrpc sentence1: E . sentence2: F .", 1)]),
    "stsb": ("glue/STS-B/dev.tsv",
             "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
             "0\tg\tf\ty\t0\tn\tn\tA.\tB.\t3.800\n1\tg\tf\ty\t1\tn\tn\tC.\tD.\t0.500\n"
             "2\tg\tf\ty\t2\tn\tn\tE.\tF.\t5.000\n",
             [("0", "stsb sentence1: A. sentence2: B.", 19), ("1", "stsb sentence1: C. sentence2: D.", 2),
              ("2", "stsb sentence1: E. sentence2: F.", 25)]),
    "rte_glue": ("glue/RTE/dev.tsv", "index\tsentence1\tsentence2\tlabel\n5\tP.\tH.\tentailment\n",
                 [("0", "rte sentence1: P. sentence2: H.", 0)]),
    "wnli": ("glue/WNLI/dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\tP.\tH.\t0\n1\tQ.\tI.\t1\n",
             [("0", "wnli sentence1: P. sentence2: H.", 0), ("1", "wnli sentence1: Q. sentence2: I.", 1)]),
}


def test_every_task_has_a_local_case():
    assert set(LOCAL) == set(TASKS)


@pytest.mark.parametrize("name", sorted(LOCAL))
def test_local_rows_are_formatted_and_labelled(tmp_path, name):
    rel, content, expected = LOCAL[name]
    write(tmp_path, rel, content)
    examples = TASKS[name].read("validation", tmp_path)
    assert [(ex.id, ex.text, ex.label) for ex in examples] == expected
    assert all(ex.task == name for ex in examples)


def test_verbalizer_order():
    v = {name: task.verbalizers for name, task in TASKS.items()}
    assert v["cb"] == ["entailment", "contradiction", "neutral"]
    assert v["copa"] == ["choice1", "choice2"]
    assert v["rte"] == v["rte_glue"] == ["entailment", "not_entailment"]
    assert v["boolq"] == v["multirc"] == v["wic"] == v["wsc"] == ["False", "True"]
    assert v["cola"] == ["unacceptable", "acceptable"] and v["sst2"] == ["negative", "positive"]
    assert v["mrpc"] == ["not_equivalent", "equivalent"] and v["wnli"] == ["not_entailment", "entailment"]
    assert v["stsb"][:3] == ["0.0", "0.2", "0.4"] and v["stsb"][-1] == "5.0" and len(v["stsb"]) == 26


def test_multirc_groups_and_stsb_values(tmp_path):
    for name in ("multirc", "stsb"):
        write(tmp_path, LOCAL[name][0], LOCAL[name][1])
    multirc = TASKS["multirc"].read("validation", tmp_path)
    assert [ex.group for ex in multirc] == ["7-20", "7-20", "7-21"]
    stsb = TASKS["stsb"].read("validation", tmp_path)
    # 3.8 -> 19 * 0.2; 0.5 is halfway between 0.4 and 0.6 and rounds half to even -> 0.4
    assert [(ex.label, ex.value) for ex in stsb] == [(19, 3.8), (2, 0.5), (25, 5.0)]


# hub rows (aps/super_glue, nyu-mll/glue): int labels, flat MultiRC / WSC, GLUE field names
HUB = {
    "boolq": ({"question": "q", "passage": "p", "idx": 3, "label": 1}, "boolq passage: p question: q", 1),
    "cb": ({"premise": "p", "hypothesis": "h", "idx": 0, "label": 2}, "cb hypothesis: h. premise: p", 2),
    "copa": ({"premise": "p", "choice1": "a", "choice2": "b", "question": "effect", "idx": 0, "label": 0},
             "choice1: a choice2: b premise: p question: effect", 0),
    "rte": ({"premise": "p", "hypothesis": "h", "idx": 0, "label": 1}, "rte sentence1: p sentence2: h", 1),
    "wic": ({"word": "w", "sentence1": "a", "sentence2": "b", "start1": 0, "start2": 0, "end1": 1, "end2": 1,
             "idx": 0, "label": 0}, "wic sentence1: a sentence2: b word: w", 0),
    "wsc": ({"text": "t", "span1_index": 0, "span2_index": 1, "span1_text": "x", "span2_text": "y", "idx": 0,
             "label": 1}, "wsc text: t span1: x span2: y", 1),
    "multirc": ({"paragraph": "<b>Sent 1: </b>P.<br>", "question": "q", "answer": "a",
                 "idx": {"paragraph": 2, "question": 5, "answer": 9}, "label": 1},
                "question: q answer: a. paragraph: Sent 1: P.", 1),
    "cola": ({"sentence": "s", "label": 0, "idx": 0}, "cola sentence: s", 0),
    "sst2": ({"sentence": "s", "label": 1, "idx": 0}, "sst2 sentence: s", 1),
    "mrpc": ({"sentence1": "a", "sentence2": "b", "label": 1, "idx": 0}, "mrpc sentence1: a sentence2: b", 1),
    "stsb": ({"sentence1": "a", "sentence2": "b", "label": 4.2, "idx": 0}, "stsb sentence1: a sentence2: b", 21),
    "rte_glue": ({"sentence1": "a", "sentence2": "b", "label": 0, "idx": 0}, "rte sentence1: a sentence2: b", 0),
    "wnli": ({"sentence1": "a", "sentence2": "b", "label": 1, "idx": 0}, "wnli sentence1: a sentence2: b", 1),
}


@pytest.mark.parametrize("name", sorted(HUB))
def test_hub_rows_are_adapted_to_the_same_examples(name):
    row, text, label = HUB[name]
    [ex] = TASKS[name].parse(Row(row, "hub", None), 0, hub=True)
    assert (ex.text, ex.label) == (text, label)
    if name == "multirc":
        assert (ex.id, ex.group) == ("2-5-9", "2-5")
    if name == "stsb":
        assert ex.value == 4.2


def test_unknown_task_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown task 'mnli'.*'rte'"):
        get_task("mnli")


# ---- real files --------------------------------------------------------------------------
COUNTS = {  # (train, validation) from data/README.md; MultiRC counts answer options
    "cb": (250, 56), "copa": (400, 100), "multirc": (27243, 4848), "rte": (2490, 277),
    "wic": (5428, 638), "wsc": (554, 104), "cola": (8551, 1043), "sst2": (67349, 872),
    "mrpc": (3668, 408), "stsb": (5749, 1500), "rte_glue": (2490, 277), "wnli": (635, 71),
}


@needs_real
@pytest.mark.parametrize("name", sorted(COUNTS))
def test_real_files_counts_and_unique_ids(name):
    train, val = (TASKS[name].read(s, REAL) for s in ("train", "validation"))
    assert (len(train), len(val)) == COUNTS[name]
    assert len({ex.id for ex in train}) == len(train)
    assert all(0 <= ex.label < len(TASKS[name].verbalizers) for ex in train + val)


@needs_real
def test_real_boolq_validation_and_multirc_passages():
    boolq = TASKS["boolq"].read("validation", REAL)
    assert len(boolq) == 3270
    assert boolq[0].text.startswith("boolq passage: Ethanol fuel -- All biomass goes through")
    assert boolq[0].text.endswith(" question: does ethanol take more energy make that produces")
    multirc = {s: TASKS["multirc"].read(s, REAL) for s in ("train", "validation")}
    assert len({ex.id.split("-")[0] for ex in multirc["train"]}) == 456
    assert len({ex.id.split("-")[0] for ex in multirc["validation"]}) == 83


@needs_real
@pytest.mark.parametrize("name,folder", [("rte", "RTE"), ("cb", "CB"), ("wic", "WiC"), ("copa", "COPA")])
def test_real_label_distribution_matches_a_plain_json_read(name, folder):
    path = Path(REAL, "superglue", folder, "train.jsonl")
    raw = Counter(json.loads(line)["label"] for line in path.read_text().splitlines())
    task = TASKS[name]
    ours = Counter(task.label_values[ex.label] for ex in task.read("train", REAL))
    assert ours == raw


@needs_real
def test_real_first_rows_exactly():
    copa = TASKS["copa"].read("validation", REAL)[0]
    assert copa.text == ("choice1: The toilet filled with water. choice2: Water flowed from the spout. "
                         "premise: The man turned on the faucet. question: effect")
    assert copa.label == 1
    rte = TASKS["rte_glue"].read("validation", REAL)[0]
    assert rte.text.startswith("rte sentence1: Dana Reeve, the widow of the actor Christopher Reeve")
    assert rte.text.endswith(" sentence2: Christopher Reeve had an accident.") and rte.label == 1
    stsb = TASKS["stsb"].read("validation", REAL)[1]  # "4.750" -> 4.8 = verbalizer 24
    assert (stsb.value, stsb.label, TASKS["stsb"].verbalizers[stsb.label]) == (4.75, 24, "4.8")
    mrpc = TASKS["mrpc"].read("validation", REAL)[0]  # the header starts with a BOM
    assert mrpc.label == 1 and mrpc.text.startswith("mrpc sentence1: He said the foodservice pie")
    wnli = TASKS["wnli"].read("validation", REAL)[:2]
    assert [ex.label for ex in wnli] == [0, 1]
