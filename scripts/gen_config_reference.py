"""Writes docs/reference/configuration.md from conf/ and the config dataclasses, so it cannot drift.

    python scripts/gen_config_reference.py           # (re)write the page
    python scripts/gen_config_reference.py --check   # exit 1 when the committed page is stale

Every YAML of conf/ (and finetune.py's presets in mmpt/conf_finetune/) becomes a table: each key
as the composed config names it (a group file's keys sit under its package, e.g. `method.rank`),
its default and the comment on its line or the line above. Methods and routers keep their
defaults in config dataclasses too (mmpt/methods, mmpt/routers, registered in METHODS / ROUTERS):
their table lists those fields, so an option that only the dataclass defines is named as well.
"""
import argparse
import dataclasses
import html
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PAGE = ROOT / "docs" / "reference" / "configuration.md"
KEY = re.compile(r"^(\s*)([\w.@/+-]+):(.*)$")
TOP = {"train.yaml": "train.py", "finetune.yaml": "finetune.py"}


def split_comment(text: str) -> tuple[str, str]:
    """(value text, comment) of the part of a line after `key:`; a # inside quotes is kept."""
    quote = None
    for i, c in enumerate(text):
        if c in "'\"" and quote in (None, c):
            quote = None if quote else c
        elif c == "#" and quote is None and (i == 0 or text[i - 1].isspace()):
            return text[:i].strip(), text[i + 1:].strip()
    return text.strip(), ""


def header(lines: list[str]) -> str:
    """The file's leading comment (its description), without Hydra's `@package` line."""
    out = []
    for line in lines:
        if not line.startswith("#"):
            break
        if "@package" not in line:
            out.append(line.lstrip("#").strip())
    return " ".join(out)


def keys_of(path: Path) -> list[tuple[str, object, str]]:
    """(dotted key, default, comment) of every leaf key of a YAML file, in file order."""
    lines = path.read_text().splitlines()
    data = yaml.safe_load(path.read_text()) or {}
    stack: list[tuple[int, str]] = []
    out = []
    for i, line in enumerate(lines):
        m = KEY.match(line)
        if not m or line.lstrip().startswith("#"):
            continue
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        value, comment = split_comment(rest)
        above = lines[i - 1].strip() if i else ""
        if not comment and above.startswith("#") and "@package" not in above:
            comment = above.lstrip("#").strip()
        parts = [k for _, k in stack] + [key]
        if value == "" and not is_list(data, parts):
            stack.append((indent, key))  # a section head: its keys follow, indented
            continue
        if parts == ["defaults"]:
            continue  # the defaults list is shown apart
        out.append((".".join(parts), lookup(data, parts), comment))
    return out


def lookup(data, parts):
    for p in parts:
        data = data.get(p) if isinstance(data, dict) else None
    return data


def is_list(data, parts) -> bool:
    return isinstance(lookup(data, parts), list)


def defaults_of(path: Path) -> list[tuple[str, str]]:
    """(group: option, comment) of a primary config's defaults list."""
    out = []
    for line in path.read_text().splitlines():
        m = re.match(r"^\s+- ([\w/]+): ([\w.]+)\s*(?:#\s*(.*))?$", line)
        if m:
            out.append((f"{m.group(1)}={m.group(2)}", m.group(3) or ""))
    return out


def package(path: Path, conf: Path) -> str:
    """The key prefix of a group file's keys: Hydra's default package (the group's path), or
    nothing for `# @package _global_` files."""
    if "@package _global_" in path.read_text().split("\n", 3)[0] + path.read_text().split("\n", 3)[1]:
        return ""
    return ".".join(path.parent.relative_to(conf).parts)


def code(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    text = text.removesuffix("...").strip()
    return f"<code>{cell(text)}</code>"


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell; `spans` become <code>."""
    parts = text.split("`")
    out = [html.escape(p, quote=False) if i % 2 == 0 else f"<code>{html.escape(p, quote=False)}</code>" for i, p in enumerate(parts)]
    return "".join(out).replace("|", "&#124;").replace("\n", " ")


def table(rows) -> list[str]:
    out = ["| key | default | comment |", "|---|---|---|"]
    out += [f"| <code>{cell(k)}</code> | {code(v)} | {cell(c)} |" for k, v, c in rows]
    return out


def dataclass_of(kind: str, name: str):
    """The config dataclass registered for a method or router name (METHODS / ROUTERS), or None."""
    if kind == "method":
        from mmpt.methods import METHODS as reg
    elif kind == "router":
        from mmpt.routers import ROUTERS as reg
    else:
        return None
    return reg.get(name).config if name in reg else None


def dataclass_rows(config, prefix: str, rows) -> list[tuple[str, object, str]]:
    """The dataclass's fields that the YAML's table does not already show: a field the YAML leaves
    out (the dataclass default applies), or one whose YAML value differs (an interpolation)."""
    yaml_rows = {k: v for k, v, _ in rows}
    out = []
    for f in dataclasses.fields(config):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")
        key = f"{prefix}.{f.name}"
        if key not in yaml_rows:
            out.append((key, default, "dataclass only: not in the YAML"))
        elif yaml_rows[key] != default:
            out.append((key, default, f"the YAML sets {yaml_rows[key]}"))
    return out


def option_section(path: Path, conf: Path, title: str) -> list[str]:
    lines = path.read_text().splitlines()
    prefix = package(path, conf)
    rows = [(f"{prefix}.{k}" if prefix else k, v, c) for k, v, c in keys_of(path)]
    out = [f"### `{title}`", "", f"`{path.relative_to(ROOT)}`: {cell(header(lines))}", ""]
    out += table(rows) if rows else ["(no keys of its own)"]
    group, option = title.split("=", 1)
    data = yaml.safe_load(path.read_text()) or {}
    taken = [f"{k.lstrip('/')}={v}" for d in data.get("defaults") or [] if isinstance(d, dict) for k, v in d.items()]
    if taken:  # e.g. the merge types' shared options (conf/experts/merge.yaml)
        out += ["", "Its defaults list adds the keys of: " + ", ".join(f"<code>{cell(t)}</code>" for t in taken)]
    own = data.get(group)
    name = (own.get("name", option) if isinstance(own, dict) else option) if prefix == "" else data.get("name", option)
    config = dataclass_of(group, name)
    if config is not None:
        where = config.__module__.replace(".", "/") + ".py"
        out += ["", f"Config dataclass: <code>{config.__name__}</code> (<code>{where}</code>), the "
                f"registry's defaults of the <code>{group}.*</code> keys. Where it differs from the YAML:", ""]
        extra = dataclass_rows(config, group, rows)
        out += table(extra) if extra else ["(nowhere: the YAML has every field, with the same default)"]
    return out + [""]


def render() -> str:
    conf = ROOT / "conf"
    out = ["# Configuration reference", "",
           "<!-- generated by scripts/gen_config_reference.py from conf/ and the config dataclasses;"
           " do not edit by hand (tests/test_docs_reference.py fails when it is stale) -->", "",
           "Every option of every config group, every key with its default and its comment, as in",
           "the YAML files under `conf/`. Set a key on the command line (`trainer.max_steps=100`),",
           "pick an option of a group (`method=lora`), or add a key a file does not have",
           "(`+optimizer.groups.router.lr=3e-2`). Generated by `python scripts/gen_config_reference.py`.", ""]
    for name, script in TOP.items():
        path = conf / name
        out += [f"## `{name}` ({script})", "", cell(header(path.read_text().splitlines())), "",
                "Its defaults list (the group options a run starts from):", "",
                "| group=option | comment |", "|---|---|"]
        out += [f"| <code>{cell(g)}</code> | {cell(c)} |" for g, c in defaults_of(path)]
        out += ["", "Its keys:", ""] + table(keys_of(path)) + [""]
    groups = sorted({p.parent for p in conf.rglob("*.yaml") if p.parent != conf})
    for group in groups:
        name = "/".join(group.relative_to(conf).parts)
        out += [f"## Group `{name}`", ""]
        for path in sorted(group.glob("*.yaml")):
            out += option_section(path, conf, f"{name}={path.stem}")
    extra = ROOT / "mmpt" / "conf_finetune"
    out += ["## finetune.py only: `mmpt/conf_finetune`", "",
            "Presets on finetune.py's search path only (`hydra.searchpath` in `conf/finetune.yaml`).", ""]
    for path in sorted(extra.rglob("*.yaml")):
        name = "/".join(path.parent.relative_to(extra).parts)
        out += option_section(path, extra, f"{name}={path.stem}")
    return "\n".join(out).rstrip() + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when the page differs from a fresh render")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        if not PAGE.exists() or PAGE.read_text() != text:
            print(f"error: {PAGE.relative_to(ROOT)} is stale: run python scripts/gen_config_reference.py",
                  file=sys.stderr)
            return 1
        return 0
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(text)
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
