"""The commands shown in README.md and docs/: collected, composed or parsed, and planned for real runs.

A command is a line (with its `\\` continuations) that starts with `python train.py`,
`python finetune.py` or `python -m mmpt.<tool>` (after optional `VAR=value` prefixes). A comment
`<!-- needs: hub -->` (or checkpoint, cluster, gpu, wandb, runs: what the line needs that a test
machine lacks) before a code block marks that block's commands: they are composed or parsed only. A
trailing `# needs: ...` marks one line. Every other command also runs for real (docs_runner.py), in
page order, in one scratch folder per page, so that a page's later commands find what its earlier
ones wrote (a run dir, a library, an export).
"""
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SCRIPTS = {"train.py": "train", "finetune.py": "finetune"}
MARK = re.compile(r"<!--\s*needs:\s*(.+?)\s*-->")
ENV = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S*\s+)+")
START = re.compile(r"^python (train\.py|finetune\.py|-m mmpt\.\w+)(\s|$)")
TINY = {"t5_tiny", "llama_tiny", "gpt2_tiny"}  # offline backbones a real run keeps


@dataclass
class Command:
    page: str              # path relative to the repo root
    line: int              # 1-based line of its first physical line
    text: str              # the whole command, continuations joined, comment dropped
    needs: str | None      # what it needs that a test machine lacks (then it only composes)
    argv: list = field(default_factory=list)  # after `python <script>` / `python -m <module>`

    @property
    def script(self) -> str:
        """'train', 'finetune' or the tool's module (e.g. 'mmpt.report')."""
        words = self.text.split()
        return SCRIPTS.get(words[1]) or words[2]

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def multirun(self) -> bool:
        return self.script in ("train", "finetune") and any(a in ("-m", "--multirun") for a in self.argv)

    def overrides(self) -> list[str]:
        return [a for a in self.argv if a not in ("-m", "--multirun")]


def fill(text: str) -> str:
    """Placeholders a reader replaces (`<run dir>`) become one word the parsers accept."""
    return re.sub(r"<[^<>]*>", "PLACEHOLDER", text)


def parse(page: str, line: int, text: str, needs: str | None) -> Command:
    words = shlex.split(fill(text), comments=True)
    start = 2 if words[1] in SCRIPTS else 3
    return Command(page, line, " ".join(words), needs, words[start:])


def collect_text(page: str, text: str) -> list[Command]:
    out, lines, pending, fence, seen = [], text.splitlines(), None, False, False
    i = 0
    while i < len(lines):
        raw = lines[i]
        stripped = raw.strip()
        mark = MARK.search(stripped)
        if mark:
            pending, seen = mark.group(1), False
        elif stripped.startswith("```"):
            fence = not fence
            if seen:
                pending, seen = None, False  # a marker covers one code block: this one, or the one before
        elif START.match(ENV.sub("", stripped)):
            first, body = i + 1, ENV.sub("", stripped)
            while body.endswith("\\") and i + 1 < len(lines):
                i += 1
                body = body[:-1].rstrip() + " " + lines[i].strip()
            trailing = re.search(r"#\s*needs:\s*(.+)$", body)
            out.append(parse(page, first, body, trailing.group(1) if trailing else pending))
            seen = True
        elif stripped and not fence and not raw.startswith("    ") and seen:
            pending, seen = None, False  # prose after an indented code block ends it
        i += 1
    return out


def collect(pages=PAGES) -> list[Command]:
    out = []
    for path in pages:
        out += collect_text(str(Path(path).relative_to(ROOT)), Path(path).read_text())
    return out


def first_value(value: str) -> str:
    """A sweep's `a,b,c` -> `a` (commas inside brackets or parentheses are kept)."""
    depth = 0
    for i, c in enumerate(value):
        depth += c in "([{"
        depth -= c in ")]}"
        if c == "," and depth == 0:
            return value[:i]
    return value


def one_point(overrides: list[str]) -> list[str]:
    """A grid's overrides with every swept key at its first value: one job to compose."""
    out = []
    for o in overrides:
        key, eq, value = o.partition("=")
        out.append(f"{key}={first_value(value)}" if eq and not key.startswith("hydra.sweeper.params") else o)
    return out


def keys_set(overrides: list[str]) -> set[str]:
    return {o.lstrip("+~").partition("=")[0] for o in overrides}


class Parsed(Exception):
    """Raised in place of running a tool once its argument parser accepted the command."""


def compose(cmd: Command):
    """The config a train.py / finetune.py command composes to (one point of a sweep), through
    the scripts' own unknown-option check and Hydra's compose API; raises on a bad command."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from mmpt.cli import refuse_unknown_options

    overrides = one_point(cmd.overrides())
    dirs = [ROOT / "conf"] + ([ROOT / "mmpt" / "conf_finetune"] if cmd.script == "finetune" else [])
    try:
        refuse_unknown_options(dirs, overrides)
    except SystemExit:
        raise AssertionError(f"{cmd.where}: an unknown option in {cmd.text!r}") from None
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name=cmd.script, overrides=overrides, return_hydra_config=True)


def parse_tool(cmd: Command) -> None:
    """Run the tool's module as `python -m` would, up to its argument parser: raises when the
    parser refuses the command (or the module is missing), returns once it accepts it."""
    import argparse
    import contextlib
    import io
    import runpy
    import sys
    from unittest import mock

    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        original(self, args, namespace)
        raise Parsed

    err = io.StringIO()
    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_then_stop), \
            mock.patch.object(sys, "argv", [cmd.script, *cmd.argv]), contextlib.redirect_stderr(err):
        try:
            runpy.run_module(cmd.script, run_name="__main__", alter_sys=True)
        except Parsed:
            return
        except SystemExit as e:
            if e.code in (0, None):
                return  # --help
            raise AssertionError(f"{cmd.where}: {cmd.text!r} refused: {err.getvalue().strip()[-500:]}") from None
    raise AssertionError(f"{cmd.where}: {cmd.script} finished without parsing {cmd.text!r}")


def check(cmd: Command):
    """Compose (scripts) or parse (tools) one command; the composed config, or None for a tool."""
    if cmd.script in ("train", "finetune"):
        return compose(cmd)
    parse_tool(cmd)
    return None


def run_argv(cmd: Command, cfg) -> list[str]:
    """The command as a test runs it for real: a tiny backbone (`model=t5_tiny`, or a tiny BERT in
    place of MiniLM), one optimizer step, one Optuna trial, one joblib worker, small mixture evaluations, run dirs
    in the page's scratch folder; a grid at its first point unless later commands read its sweep
    dir. Other keys the command sets are kept."""
    if cmd.script not in ("train", "finetune"):
        return list(cmd.argv)
    over = cmd.overrides()
    keys = keys_set(over)
    if cmd.multirun and "hydra.sweep.dir" not in keys:
        over = one_point(over)
    extra = []
    if cmd.script == "train":
        build = cfg.model.get("build")
        if build not in TINY:
            over = [o for o in over if not o.startswith(("model=", "model.name_or_path="))]
            extra += ["model=local", "model.name_or_path=TINY_BERT"] if build == "minilm" else ["model=t5_tiny"]
    # one optimizer step (an evaluate-only `trainer.max_steps=0` stays), one Optuna trial
    over = [o for o in over if not o.startswith(("trainer.max_steps=", "hydra.sweeper.n_trials="))
            or o == "trainer.max_steps=0"]
    if "trainer.max_steps=0" not in over:
        extra.append("trainer.max_steps=1")
    if "max_eval_per_task" in cfg.dataset and "dataset.max_eval_per_task" not in keys:
        extra.append("dataset.max_eval_per_task=16")
    if cmd.multirun and "n_trials" in cfg.hydra.sweeper:
        extra.append("hydra.sweeper.n_trials=1")
    if "hydra.launcher.n_jobs" in keys:  # joblib runs one job in-process (starting workers costs ~60 s)
        over = [o for o in over if not o.startswith("hydra.launcher.n_jobs=")] + ["hydra.launcher.n_jobs=1"]
    if not cmd.multirun and "hydra.run.dir" not in keys:
        extra.append(f"hydra.run.dir=runs/_line{cmd.line}")
    if cmd.multirun and "hydra.sweep.dir" not in keys:
        extra.append(f"hydra.sweep.dir=multirun/_line{cmd.line}")
    return (["-m"] if cmd.multirun else []) + over + extra

