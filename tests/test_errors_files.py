"""A truncated safetensors file, on every path that reads one, is one line naming the file and what
was expected (exit 2 from the command line), and the run writes nothing."""
import re
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import DATA, ROOT, compose_cfg
from mmpt.data import get_task
from mmpt.engine import checkpoint
from mmpt.errors import CheckpointError, ConfigError
from mmpt.recipes import train
from mmpt.export import head
from mmpt.export.__main__ import export
from mmpt.export.mapping import ExportError
from mmpt.export.peft_format import WEIGHTS
from conftest import load_run
from mmpt.library import Library, LibraryError
from mmpt.library.extract import build
from mmpt.models import build_model
from test_library import SMALL, make_run

CUTS = {"in the header": 100, "in the data": -50}  # bytes kept: the first 100, all but the last 50
EXPECTED = "; expected a complete safetensors file"


def cut(path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


def one_line(e) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A lora run (random adapters, no training) and its PEFT export (with base_model/ beside it)."""
    root = tmp_path_factory.mktemp("adapter")
    run = make_run(root / "run", "lora", "cb")
    export(run, "peft", root / "peft")
    import_into_new_run(root / "peft", root / "imported")  # whole, it imports: what fails below is the cut
    assert (root / "imported" / "metrics.json").is_file()
    return root


def import_into_new_run(peft_dir, run_dir):
    cfg = compose_cfg([*SMALL, "method=lora", "method.rank=2", "dataset=cb", f"init_from=peft:{peft_dir}",
                       "trainer.max_steps=0"], run_dir=run_dir)
    return train(cfg)


@pytest.mark.parametrize("where", CUTS)
def test_a_truncated_adapter_is_refused_naming_the_file(adapter, tmp_path, where):
    peft = shutil.copytree(adapter / "peft", tmp_path / "peft")
    cut(peft / WEIGHTS, CUTS[where])
    with pytest.raises(ExportError) as e:
        import_into_new_run(peft, tmp_path / "run")
    assert re.fullmatch(rf"{re.escape(str(peft / WEIGHTS))}: cannot read the adapter weights \(Error while "
                        rf"deserializing header: .*\){EXPECTED}", one_line(e))
    assert not (tmp_path / "run" / "metrics.json").exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_a_truncated_base_model_beside_the_adapter_names_its_file(adapter, tmp_path):
    peft = shutil.copytree(adapter / "peft", tmp_path / "peft")
    base = peft / "base_model" / "model.safetensors"
    cut(base, CUTS["in the data"])
    with pytest.raises(ConfigError) as e:
        import_into_new_run(peft, tmp_path / "run")
    assert one_line(e).startswith(f"config error at `init_from`: {base}: cannot read the base model weights")
    assert one_line(e).endswith(EXPECTED)


def test_an_unreadable_adapter_config_names_it(adapter, tmp_path):
    peft = shutil.copytree(adapter / "peft", tmp_path / "peft")
    (peft / "adapter_config.json").write_text('{"peft_type": "LORA", ')
    with pytest.raises(ExportError, match=rf"^{re.escape(str(peft / 'adapter_config.json'))}: cannot read the "
                                          "adapter's config .*; expected the JSON PEFT writes$"):
        import_into_new_run(peft, tmp_path / "run")


@pytest.mark.subprocess
def test_train_py_refuses_a_truncated_adapter_in_one_line_and_exits_2(adapter, tmp_path):
    peft = shutil.copytree(adapter / "peft", tmp_path / "peft")
    cut(peft / WEIGHTS, CUTS["in the header"])
    proc = subprocess.run([sys.executable, "train.py", *SMALL, "method=lora", "method.rank=2", "dataset=cb",
                           f"init_from=peft:{peft}", "trainer.max_steps=0", f"hydra.run.dir={tmp_path / 'run'}",
                           f"paths.data_dir={DATA}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and f"{peft / WEIGHTS}: cannot read" in proc.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_truncated_task_head_or_a_missing_head_json_is_refused(tiny_bert_dir, tmp_path):
    tasks = [get_task("rte")]
    model = build_model(compose_cfg(["model=local", f"model.name_or_path={tiny_bert_dir}"]).model,
                        compose_cfg(["method=full"]).method, tasks=tasks)
    head.write(model, tasks, tmp_path)
    assert head.load(model, tasks, tmp_path)
    cut(tmp_path / head.WEIGHTS, CUTS["in the data"])
    with pytest.raises(ExportError) as e:
        head.load(model, tasks, tmp_path)
    assert one_line(e).startswith(f"{tmp_path / head.WEIGHTS}: cannot read the task heads")
    (tmp_path / head.INFO).unlink()
    with pytest.raises(ExportError, match=f"{tmp_path / head.INFO}: cannot read the heads' description"):
        head.load(model, tasks, tmp_path)


@pytest.mark.parametrize("where", CUTS)
def test_a_truncated_checkpoint_is_refused_naming_the_file(tmp_path, where):
    run = make_run(tmp_path / "run", "lora", "cb")
    load_run(run)
    weights = run / "checkpoints" / "best" / checkpoint.WEIGHTS
    cut(weights, CUTS[where])
    with pytest.raises(CheckpointError) as e:
        load_run(run)
    assert one_line(e).startswith(f"{weights}: cannot read the checkpoint's weights (Error while deserializing")
    assert one_line(e).endswith(EXPECTED)


@pytest.mark.subprocess
def test_export_of_a_run_with_a_truncated_checkpoint_exits_2_in_one_line(tmp_path):
    run = make_run(tmp_path / "run", "lora", "cb")
    weights = run / "checkpoints" / "best" / checkpoint.WEIGHTS
    cut(weights, CUTS["in the header"])
    proc = subprocess.run([sys.executable, "-m", "mmpt.export", str(run), "--format", "peft", "--out",
                           str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and str(weights) in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.fixture
def library(tmp_path):
    return Library(build(tmp_path / "lib", [make_run(tmp_path / "cb", "lora", "cb"),
                                            make_run(tmp_path / "rte", "lora", "rte")]))


@pytest.mark.parametrize("where", CUTS)
def test_a_truncated_expert_is_refused_when_the_library_is_opened(library, where):
    expert = library.path / "experts" / "rte.safetensors"
    cut(expert, CUTS[where])
    with pytest.raises(LibraryError) as e:
        Library(library.path)
    assert one_line(e).startswith(f"expert `rte` (task rte, run {library.experts[1]['source']}): {expert}: "
                                  "cannot read the expert (Error while deserializing header")
    with pytest.raises(LibraryError, match=re.escape(f"{expert}: cannot read the expert")):
        library.tensors("rte")  # cut after the library was opened


def test_a_truncated_cache_file_is_recomputed_and_rewritten(library, caplog):
    calls = []

    def compute():
        calls.append(1)
        return {"x": torch.arange(4.0)}

    library.cached("thing", compute)
    path = library.path / "cache" / "thing.safetensors"
    cut(path, CUTS["in the data"])
    assert torch.equal(library.cached("thing", compute)["x"], torch.arange(4.0)) and len(calls) == 2
    assert f"library cache {path} cannot be read" in caplog.text
    assert torch.equal(library.cached("thing", compute)["x"], torch.arange(4.0)) and len(calls) == 2  # whole again
