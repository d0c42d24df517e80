"""Hydra ends at the door: train.py / finetune.py (through mmpt/cli.py) read Hydra's state into a
RunContext; nothing below the recipes imports hydra or reads HydraConfig, not even through an mmpt
module it imports (lazily, inside a function, included)."""
import ast

from conftest import ROOT

BELOW = ["engine", "methods", "models", "data", "routers", "library", "report", "export", "runs.py", "trial.py",
         "context.py", "settings.py"]


def files(root) -> dict:
    """{module name: path} of the mmpt package under `root`."""
    out = {}
    for path in (root / "mmpt").rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def scan(path, root) -> tuple[list[str], list[str]]:
    """(hydra reads as 'file:line what', the mmpt names the file imports)."""
    hits, imports = [], []
    where = lambda node: f"{path.relative_to(root).as_posix()}:{node.lineno}"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names, mmpt = [], []
        if isinstance(node, ast.Import):
            names = mmpt = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names, mmpt = [node.module], [f"{node.module}.{a.name}" for a in node.names]
        hits += [f"{where(node)} imports {n}" for n in names if n == "hydra" or n.startswith("hydra.")]
        imports += [n for n in mmpt if n.startswith("mmpt.")]
        if isinstance(node, ast.Name) and node.id == "HydraConfig" or \
                isinstance(node, ast.Attribute) and node.attr == "HydraConfig":
            hits.append(f"{where(node)} reads HydraConfig")
    return hits, imports


def hydra_below(root=ROOT) -> list[str]:
    """Every hydra read in the modules below the recipes and in every mmpt module they import."""
    known = files(root)
    todo = [m for m in known if any(m == f"mmpt.{b.removesuffix('.py')}" or m.startswith(f"mmpt.{b}.") for b in BELOW)]
    seen, hits = set(), []
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        found, imports = scan(known[mod], root)
        hits += found
        for name in imports:  # the longest known module the import names (a module, or a name in one)
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                todo.append(name)
    return sorted(set(hits))


def test_nothing_below_the_recipes_reads_hydra():
    assert hydra_below() == []


def test_the_scan_finds_direct_lazy_and_indirect_hydra_reads(tmp_path):
    """The scan itself, on a made-up package: a direct import, a HydraConfig read, and a module
    below the recipes that imports the door (mmpt.cli) inside a function."""
    (tmp_path / "mmpt" / "engine").mkdir(parents=True)
    (tmp_path / "mmpt" / "cli.py").write_text("from hydra.core.hydra_config import HydraConfig\nHydraConfig.get()\n")
    (tmp_path / "mmpt" / "engine" / "loop.py").write_text("def f():\n    from mmpt.cli import main\n")
    (tmp_path / "mmpt" / "trial.py").write_text("import os\n\n\ndef g():\n    import hydra.utils\n")
    (tmp_path / "mmpt" / "recipes.py").write_text("import hydra\n")  # above the door's floor: allowed
    assert hydra_below(tmp_path) == ["mmpt/cli.py:1 imports hydra.core.hydra_config", "mmpt/cli.py:2 reads HydraConfig",
                                     "mmpt/trial.py:5 imports hydra.utils"]
