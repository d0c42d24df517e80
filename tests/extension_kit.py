"""A throw-away copy of the project for tests/test_extension_points.py: a test adds a new kind of
extension the way a contributor would (a module in its room and, where the kind has one, a YAML in
conf/), with no other file touched, and runs the user's commands in the copy. If the new kind only
works after another file is edited (an import list, a table of names, a schema), the run fails."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MMPT_DATA_DIR", ROOT.parent / "shared" / "data"))
SKIP = {".git", ".venv", "outputs", "multirun", "libs", "site", "wandb", "results", "__pycache__",
        ".pytest_cache", "bench", "examples", "docs"}


class ProjectCopy:
    def __init__(self, path: Path):
        self.path = path
        shutil.copytree(ROOT, path, ignore=lambda d, names: [n for n in names if n in SKIP or n.endswith(".egg-info")])

    def add(self, relpath: str, text: str) -> Path:
        """A new file of the contributor's (refuses to overwrite: an extension edits nothing)."""
        p = self.path / relpath
        assert not p.exists(), f"{relpath} exists already: an extension must not edit a file"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        return p

    def run(self, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
        """`python ARGS...` in the copy, importing the copy's mmpt and hydra_plugins; fails the test
        with the output's tail when the command fails."""
        env = {**os.environ, "PYTHONPATH": str(self.path), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
               "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1", "MMPT_DATA_DIR": str(DATA)}
        out = subprocess.run([sys.executable, *args], cwd=self.path, env=env, capture_output=True,
                             text=True, timeout=timeout)
        assert out.returncode == 0, f"python {' '.join(args)} failed:\n{(out.stdout + out.stderr)[-3000:]}"
        return out
