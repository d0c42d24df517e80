"""Writes docs/reference/configuration.md from conf/ and the config dataclasses, so it cannot drift.

    python scripts/gen_config_reference.py           # (re)write the page
    python scripts/gen_config_reference.py --check   # exit 1 when the committed page is stale

Every YAML of conf/ (and finetune.py's presets in mmpt/conf_finetune/) becomes a table, and so
does each config a Hydra plugin of the project registers (PLUGIN_OPTIONS: the sweeper's settings
dataclass, whose fields carry their comments as the YAMLs do): each key
as the composed config names it (a group file's keys sit under its package, e.g. `method.rank`),
its default and the comment on its line or the line above. A method's or router's YAML is the one
place of its defaults; its config dataclass (mmpt/methods, mmpt/routers, registered in METHODS /
ROUTERS) holds the options' types, which its table shows beside them.
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
# group -> (option, module, dataclass) registered in Hydra's ConfigStore by a plugin, not a YAML of conf/
PLUGIN_OPTIONS = {"hydra/sweeper": [("resumable_optuna", "hydra_plugins.mmpt_optuna_sweeper.config",
                                     "ResumableOptunaConf")]}
FIELD = re.compile(r"^\s+(\w+): [^=]+?(?: = .*?)?(?:\s+#\s*(.*))?$")


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


def types_of(config) -> dict[str, str]:
    """{field: its type as written} of a config dataclass."""
    return {f.name: f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            for f in dataclasses.fields(config)}


def option_section(path: Path, conf: Path, title: str) -> list[str]:
    lines = path.read_text().splitlines()
    prefix = package(path, conf)
    rows = [(f"{prefix}.{k}" if prefix else k, v, c) for k, v, c in keys_of(path)]
    out = [f"### `{title}`", "", f"`{path.relative_to(ROOT)}`: {cell(header(lines))}", ""]
    group, option = title.split("=", 1)
    data = yaml.safe_load(path.read_text()) or {}
    taken = [f"{k.lstrip('/')}={v}" for d in data.get("defaults") or [] if isinstance(d, dict) for k, v in d.items()]
    if taken:  # e.g. the merge types' shared options (conf/experts/merge.yaml)
        out += ["", "Its defaults list adds the keys of: " + ", ".join(f"<code>{cell(t)}</code>" for t in taken)]
    own = data.get(group)
    name = (own.get("name", option) if isinstance(own, dict) else option) if prefix == "" else data.get("name", option)
    config = dataclass_of(group, name)
    if config is None:
        return out + (table(rows) if rows else ["(no keys of its own)"]) + [""]
    types = {f"{group}.{k}": t for k, t in types_of(config).items()}
    out += ["| key | type | default | comment |", "|---|---|---|---|"]
    out += [f"| <code>{cell(k)}</code> | {cell(types.get(k, ''))} | {code(v)} | {cell(c)} |" for k, v, c in rows]
    where = config.__module__.replace(".", "/") + ".py"
    out += ["", f"Types: config dataclass <code>{config.__name__}</code> (<code>{where}</code>), which the "
            f"registry merges this YAML into; the defaults are the YAML's only.", ""]
    return out


def dataclass_keys(config, prefix: str) -> list[tuple[str, object, str]]:
    """(dotted key, default, comment) of a settings dataclass's fields, nested dataclasses opened;
    the comment is the one on the field's line or the line above (as in the YAMLs)."""
    import inspect

    lines = inspect.getsource(config).splitlines()
    comments = {}
    for i, line in enumerate(lines):
        m = FIELD.match(line)
        if m:
            above = lines[i - 1].strip()
            comments[m.group(1)] = m.group(2) or (above.lstrip("#").strip() if above.startswith("#") else "")
    out = []
    for f in dataclasses.fields(config):
        if f.name == "defaults":
            continue  # shown apart, as a YAML's defaults list
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if dataclasses.is_dataclass(default):
            out += dataclass_keys(type(default), f"{prefix}.{f.name}")
        else:
            out.append((f"{prefix}.{f.name}", "???" if default == "???" else default, comments.get(f.name, "")))
    return out


def plugin_section(group: str, option: str, module: str, name: str) -> list[str]:
    import importlib

    mod = importlib.import_module(module)
    config = getattr(mod, name)
    where = module.replace(".", "/") + ".py"
    defaults = ", ".join(f"`{group}/{k}={v}`" for d in config().defaults for k, v in d.items())
    out = [f"### `{group}={option}`", "", f"Registered in Hydra's ConfigStore by `{where}` (dataclass "
           f"`{config.__name__}`): {cell(mod.__doc__.split(chr(10) + chr(10))[0])} Its defaults: {cell(defaults)}.", ""]
    return out + table(dataclass_keys(config, group.replace("/", "."))) + [""]


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
    groups = sorted({p.parent for p in conf.rglob("*.yaml") if p.parent != conf} | {conf / g for g in PLUGIN_OPTIONS})
    for group in groups:
        name = "/".join(group.relative_to(conf).parts)
        out += [f"## Group `{name}`", ""]
        for option, module, dataclass in PLUGIN_OPTIONS.get(name, []):
            out += plugin_section(name, option, module, dataclass)
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
