"""train / val / test: sizes, per-label shares, disjointness, seeds; and resolve_data_dir."""
from collections import Counter
from pathlib import Path

import pytest

from mmpt.data import splits
from mmpt.data.splits import load_splits, resolve_data_dir
from mmpt.errors import ConfigError

REAL = resolve_data_dir(None)
pytestmark = pytest.mark.skipif(REAL is None or not Path(REAL, "superglue").is_dir(),
                                reason="no local copy of the benchmark data")


def ids(examples):
    return [ex.id for ex in examples]


def test_rte_sizes_and_per_label_shares():
    out = load_splits("rte", REAL, seed=0)
    assert len(out["train"]) + len(out["val"]) == 2490 and len(out["test"]) == 277
    full = Counter(ex.label for ex in out["train"] + out["val"])
    held = Counter(ex.label for ex in out["val"])
    assert held == {label: round(0.1 * n) for label, n in full.items()}
    assert not set(ids(out["train"])) & set(ids(out["val"]))


def test_cb_keeps_each_class_in_val():
    out = load_splits("cb", REAL, seed=3, val_fraction=0.2)
    full = Counter(ex.label for ex in out["train"] + out["val"])
    assert Counter(ex.label for ex in out["val"]) == {k: round(0.2 * n) for k, n in full.items()}
    assert len(out["test"]) == 56


def test_same_seed_same_split_other_seed_other_split():
    a, b, c = (load_splits("rte", REAL, seed=s) for s in (0, 0, 1))
    assert ids(a["val"]) == ids(b["val"]) and ids(a["train"]) == ids(b["train"])
    assert set(ids(a["val"])) != set(ids(c["val"]))
    assert ids(a["test"]) == ids(c["test"])  # the test set never depends on the seed


def test_train_keeps_file_order():
    out = load_splits("rte", REAL, seed=0)
    assert [int(i) for i in ids(out["train"])] == sorted(int(i) for i in ids(out["train"]))


def test_multirc_holds_out_whole_passages():
    out = load_splits("multirc", REAL, seed=0)
    passages = {k: {ex.id.split("-")[0] for ex in out[k]} for k in ("train", "val")}
    assert not passages["train"] & passages["val"]
    assert len(passages["val"]) == round(0.1 * 456)
    assert len(out["train"]) + len(out["val"]) == 27243


def test_stsb_is_stratified_by_rounded_score():
    out = load_splits("stsb", REAL, seed=0)
    full = Counter(ex.label for ex in out["train"] + out["val"])
    assert Counter(ex.label for ex in out["val"]) == {k: round(0.1 * n) for k, n in full.items()}


def test_zero_val_fraction_and_bad_values():
    out = load_splits("copa", REAL, seed=0, val_fraction=0.0)
    assert (len(out["train"]), len(out["val"])) == (400, 0)
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match="dataset.val_fraction"):
            load_splits("copa", REAL, seed=0, val_fraction=bad)


def test_resolve_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MMPT_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir("/some/where") == "/some/where"
    assert resolve_data_dir(None) == str(tmp_path / "env")
    monkeypatch.delenv("MMPT_DATA_DIR")
    repo_root = Path(splits.__file__).resolve().parents[2]
    assert resolve_data_dir(None) == str(repo_root.parent / "shared" / "data")
    # a checkout with no ../shared/data next to it falls back to the hub (None)
    monkeypatch.setattr(splits, "__file__", str(tmp_path / "repo" / "mmpt" / "data" / "splits.py"))
    assert resolve_data_dir(None) is None
