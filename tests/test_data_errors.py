"""Every DataError case: the message names the file, the 1-based line and the field, and says
what was expected."""
import json
from pathlib import Path

import pytest

from mmpt.data.loading import read_jsonl, read_tsv
from mmpt.data.splits import load_splits, resolve_data_dir
from mmpt.data.tasks import TASKS
from mmpt.errors import DataError

RTE_VAL = "superglue/RTE/val.jsonl"
GOOD = {"premise": "P.", "hypothesis": "H.", "label": "entailment", "idx": 0}


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def jsonl(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def raises(fn, *args) -> DataError:
    with pytest.raises(DataError) as info:
        fn(*args)
    return info.value


def test_missing_file(tmp_path):
    err = raises(TASKS["rte"].read, "validation", tmp_path)
    assert str(tmp_path / RTE_VAL) in str(err) and "no validation file for task `rte`" in str(err)
    err = raises(read_jsonl, tmp_path / "nope.jsonl")
    assert "nope.jsonl" in str(err) and "file not found" in str(err)


def test_empty_file(tmp_path):
    path = write(tmp_path, RTE_VAL, "\n  \n")
    err = raises(TASKS["rte"].read, "validation", tmp_path)
    assert str(err) == f"data error in {path}: file is empty; expected one record per line"


def test_bad_json_line_reports_its_line_number(tmp_path):
    # line 3 is blank; the broken record is on line 4
    path = write(tmp_path, RTE_VAL, jsonl(GOOD, {**GOOD, "idx": 1}, "", '{"premise": "P.", "hypothesis"'))
    err = raises(TASKS["rte"].read, "validation", tmp_path)
    assert str(err).startswith(f"data error in {path}, line 4: not valid JSON")
    assert "expected one JSON object per line" in str(err) and err.line == 4


def test_json_line_that_is_not_an_object(tmp_path):
    path = write(tmp_path, RTE_VAL, jsonl(GOOD, "[1, 2]"))
    err = raises(read_jsonl, path)
    assert err.line == 2 and "expected a JSON object, got list" in str(err)


def test_missing_field(tmp_path):
    row = {k: v for k, v in GOOD.items() if k != "hypothesis"}
    path = write(tmp_path, RTE_VAL, jsonl(GOOD, {**row, "idx": 1}))
    err = raises(TASKS["rte"].read, "validation", tmp_path)
    assert str(err) == (f"data error in {path}, line 2: field `hypothesis`: "
                        "missing; every record needs this field")
    assert (err.line, err.field) == (2, "hypothesis")


def test_unknown_label(tmp_path):
    path = write(tmp_path, RTE_VAL, jsonl(GOOD, {**GOOD, "idx": 1, "label": "maybe"}))
    err = raises(TASKS["rte"].read, "validation", tmp_path)
    assert str(err) == (f"data error in {path}, line 2: field `label`: "
                        "expected one of ['entailment', 'not_entailment'], got 'maybe'")


def test_label_of_the_wrong_type_on_a_later_line(tmp_path):
    # an int label among strings makes `datasets` fail to build a table; the line-by-line
    # fallback must still name line 4 (line 2 is blank)
    write(tmp_path, RTE_VAL, jsonl(GOOD, "", {**GOOD, "idx": 1}, {**GOOD, "idx": 2, "label": 1}))
    err = raises(TASKS["rte"].read, "validation", tmp_path)
    assert (err.line, err.field) == (4, "label") and "got 1" in str(err)


def test_bool_label_task_rejects_strings(tmp_path):
    write(tmp_path, "superglue/WiC/val.jsonl",
          jsonl({"word": "w", "sentence1": "a", "sentence2": "b", "idx": 0, "label": "true"}))
    err = raises(TASKS["wic"].read, "validation", tmp_path)
    assert "expected one of [False, True], got 'true'" in str(err) and err.line == 1


def test_nested_missing_field_names_its_full_path(tmp_path):
    passage = {"text": "P.", "questions": [{"question": "q", "idx": 0, "answers": [
        {"text": "a", "idx": 0, "label": 1}, {"text": "b", "idx": 1}]}]}
    write(tmp_path, "superglue/MultiRC/val.jsonl", jsonl({"idx": 0, "passage": passage}))
    err = raises(TASKS["multirc"].read, "validation", tmp_path)
    assert "line 1: field `passage.questions[0].answers[1].label`: missing" in str(err)


def test_duplicate_id(tmp_path):
    write(tmp_path, RTE_VAL, jsonl(GOOD, GOOD))
    err = raises(TASKS["rte"].read, "validation", tmp_path)
    assert err.line == 2 and "duplicate example id '0'" in str(err)


def test_boolq_has_no_training_file():
    data_dir = resolve_data_dir(None)
    if data_dir is None or not Path(data_dir, "superglue/BoolQ/val.jsonl").is_file():
        pytest.skip("no local copy of the benchmark data")
    err = raises(load_splits, "boolq", data_dir, 0)
    assert "no training file for task `boolq`" in str(err)
    assert str(Path(data_dir, "superglue/BoolQ/train.jsonl")) in str(err)


# ---- GLUE tsv ----------------------------------------------------------------------------
RTE_DEV = "glue/RTE/dev.tsv"
HEADER = "index\tsentence1\tsentence2\tlabel\n"


def test_tsv_row_with_too_many_fields(tmp_path):
    path = write(tmp_path, RTE_DEV, HEADER + "0\tP.\tH.\tentailment\n1\tP.\tH.\tentailment\textra\n")
    err = raises(TASKS["rte_glue"].read, "validation", tmp_path)
    assert str(err).startswith(f"data error in {path}, line 3: expected 4 tab-separated fields")
    assert "got 5" in str(err)


def test_tsv_row_with_a_missing_field(tmp_path):
    path = write(tmp_path, RTE_DEV, HEADER + "0\tP.\tH.\tentailment\n1\tP.\tH.\n")
    err = raises(TASKS["rte_glue"].read, "validation", tmp_path)
    assert str(err) == f"data error in {path}, line 3: field `label`: missing; every record needs this field"


def test_tsv_unknown_label(tmp_path):
    write(tmp_path, "glue/SST-2/dev.tsv", "sentence\tlabel\nfine\t1\nbad\t2\n")
    err = raises(TASKS["sst2"].read, "validation", tmp_path)
    assert (err.line, err.field) == (3, "label") and "expected one of ['0', '1'], got '2'" in str(err)


def test_tsv_header_only(tmp_path):
    path = write(tmp_path, RTE_DEV, HEADER)
    err = raises(read_tsv, path)
    assert "no data rows" in str(err)


def test_stsb_score_out_of_range(tmp_path):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    write(tmp_path, "glue/STS-B/dev.tsv", header + "0\tg\tf\ty\t0\tn\tn\tA.\tB.\t5.5\n")
    err = raises(TASKS["stsb"].read, "validation", tmp_path)
    assert (err.line, err.field) == (2, "score") and "expected a number in [0.0, 5.0], got '5.5'" in str(err)
