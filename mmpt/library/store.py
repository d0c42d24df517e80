"""The library directory: one safetensors file per expert, an index, and a cache of derived tensors.

    DIR/index.json                 format, id, model (the backbone's model config), kind, compat
                                   (what every expert shares: backbone, targets, rank, ...), experts
                                   (name, method, kind, task, skill, source, val_metric, val_score, file)
    DIR/experts/<name>.safetensors the expert's tensors (LoRA: `<module>.lora_A` [r, d_in] and
                                   `<module>.lora_B` [d_out, r], B already times alpha / r, so the
                                   expert's update of that Linear's weight is exactly B @ A)
    DIR/cache/<what>.safetensors   prototypes and merges, computed on first use (Library.cached)

A library is written once (build refuses a non-empty --out) and never changed, so a cache file is
valid as long as it carries the library's id (a hash of the expert files).
"""
import hashlib
import json
import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from mmpt import tensorfile
from mmpt.errors import MMPTError

log = logging.getLogger(__name__)

FORMAT, INDEX, EXPERTS, CACHE = "mmpt-library/1", "index.json", "experts", "cache"


class LibraryError(MMPTError):
    """A library cannot be built from these runs, or a directory is not a usable library."""


@dataclass
class Expert:
    """One expert on its way into a library. `compat` holds what all experts of a library must
    share (e.g. kind, backbone, targets, rank); `info` what the index shows about this one."""
    name: str
    method: str
    tensors: dict
    compat: dict
    info: dict = field(default_factory=dict)


def _describe(value, other) -> str:
    """A value short enough for one line: a backbone by its name (and the first setting in which
    it differs from `other`), a long target list by its length and first module."""
    if isinstance(value, dict):
        name = str(value.get("name_or_path") or value.get("build"))
        diff = [k for k in value if not isinstance(other, dict) or other.get(k) != value[k]]
        return name if not diff or diff[0] in ("name_or_path", "build") else f"{name} ({diff[0]}={value[diff[0]]})"
    if isinstance(value, list) and len(value) > 2:
        return f"{len(value)} modules ({value[0]}, ...)"
    return str(value)


def refuse_nonempty(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LibraryError(f"--out {out} already exists and is not empty; choose a new directory")


def who(name, info: dict) -> str:
    """An expert as errors name it: experts of several runs can share a name (their task), so its
    task and the run it comes from are shown too."""
    return f"expert `{name}` (task {info.get('task')}, run {info.get('source')})"


def check_compatible(experts: list) -> dict:
    """The compat dict every expert shares; else one line naming the odd expert (the one whose
    value is the rarest) and an expert it differs from, each with its task and run."""
    keys = list(dict.fromkeys(k for e in experts for k in e.compat))
    for key in keys:
        values = [json.dumps(e.compat.get(key), sort_keys=True) for e in experts]
        counts = Counter(values)
        if len(counts) > 1:
            common = counts.most_common(1)[0][0]
            odd = next(e for e, v in zip(experts, values) if counts[v] == min(counts.values()) and v != common)
            others = next(e for e, v in zip(experts, values) if v == common)
            a, b = odd.compat.get(key), others.compat.get(key)
            raise LibraryError(f"{who(odd.name, odd.info)} has {key} {_describe(a, b)}, but "
                               f"{who(others.name, others.info)} has {_describe(b, a)}: a library holds "
                               "experts of one backbone, targets and rank")
    return dict(experts[0].compat)


def unique_names(experts: list) -> None:
    """Experts of the same task (e.g. several seeds) get `_2`, `_3`, ... in the order given."""
    seen = Counter()
    for e in experts:
        seen[e.name] += 1
        if seen[e.name] > 1:
            e.name = f"{e.name}_{seen[e.name]}"


def write(out, experts: list, model_cfg: dict) -> Path:
    """Write a library of `experts` to the new directory `out` (atomically: a .tmp renamed)."""
    out = Path(out)
    refuse_nonempty(out)
    if not experts:
        raise LibraryError("no experts to write")
    unique_names(experts)
    compat = check_compatible(experts)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / EXPERTS).mkdir(parents=True)
    digest, rows = hashlib.sha256(), []
    for e in experts:
        path = tmp / EXPERTS / f"{e.name}.safetensors"
        save_file({k: v.detach().float().contiguous().cpu() for k, v in e.tensors.items()}, path)
        digest.update(path.read_bytes())
        rows.append({"name": e.name, "method": e.method, "kind": e.compat.get("kind"), **e.info,
                     "file": f"{EXPERTS}/{e.name}.safetensors"})
    index = {"format": FORMAT, "id": digest.hexdigest()[:16], "model": model_cfg, "kind": compat.get("kind"),
             "compat": compat, "experts": rows}
    (tmp / INDEX).write_text(json.dumps(index, indent=1))
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out


# What every index.json holds, and every expert row in it (what a hand edit must not break)
INDEX_FIELDS = {"id": str, "kind": str, "model": dict, "compat": dict, "experts": list}
TYPE_NAMES = {str: "string", dict: "object", list: "list"}
ROW_FIELDS = ("name", "method", "task", "source", "file")  # non-empty strings
REBUILD = "a library is written once by `python -m mmpt.library build`: rebuild it from its runs"


def read_index(path: Path) -> dict:
    """DIR/index.json, checked field by field (one line naming the file and the field)."""
    index = path / INDEX
    if not index.is_file():
        raise LibraryError(f"library={path}: no {INDEX}; expected a directory written by "
                           "`python -m mmpt.library build`")
    try:
        data = json.loads(index.read_text())
    except (OSError, ValueError) as e:
        raise LibraryError(f"{index}: not valid JSON ({tensorfile.reason(e)}); {REBUILD}") from None
    if not isinstance(data, dict):
        raise LibraryError(f"{index}: expected a JSON object, got {type(data).__name__}; {REBUILD}")
    if data.get("format") != FORMAT:
        raise LibraryError(f"{index}: format {data.get('format')!r}, expected {FORMAT!r}")
    for key, kind in INDEX_FIELDS.items():
        if not isinstance(data.get(key), kind) or not data[key]:
            what = "missing" if key not in data else f"{json.dumps(data[key])[:60]}"
            raise LibraryError(f"{index}: `{key}` is {what}; expected a non-empty {TYPE_NAMES[kind]}; {REBUILD}")
    seen = set()
    for i, row in enumerate(data["experts"]):
        if not isinstance(row, dict):
            raise LibraryError(f"{index}: experts[{i}] is {json.dumps(row)[:60]}; expected an object; {REBUILD}")
        for key in ROW_FIELDS:
            if not isinstance(row.get(key), str) or not row[key]:
                what = "has no" if key not in row else f"has {json.dumps(row[key])} as its"
                raise LibraryError(f"{index}: experts[{i}] (name {row.get('name')!r}) {what} `{key}`; expected a "
                                   f"non-empty string (every expert has {', '.join(ROW_FIELDS)}); {REBUILD}")
        if row.get("kind") not in (None, data["kind"]):
            raise LibraryError(f"{index}: {who(row['name'], row)} is a {row['kind']} expert in a library of "
                               f"{data['kind']} experts; {REBUILD}")
        if row["name"] in seen:
            raise LibraryError(f"{index}: two experts are named `{row['name']}`; expected unique names; {REBUILD}")
        seen.add(row["name"])
    return data


class Library:
    """A library directory, read: its index, each expert's tensors, and cached derived tensors.

    Opening one checks it whole (the index's fields, every expert file's header, the experts'
    tensor names and shapes), so `show`, `build` and every finetune type refuse a broken library
    in one line before anything is loaded or written."""

    def __init__(self, path):
        self.path = Path(path)
        self.index = read_index(self.path)
        self.experts = self.index["experts"]
        self.names = [e["name"] for e in self.experts]
        self.compat, self.kind, self.id = self.index["compat"], self.index["kind"], self.index["id"]
        self._check_files()

    def _row(self, name: str) -> dict:
        row = next((e for e in self.experts if e["name"] == name), None)
        if row is None:
            raise LibraryError(f"library {self.path} has no expert `{name}` (it has {self.names})")
        return row

    def _file(self, row: dict) -> Path:
        path = self.path / row["file"]
        if not path.resolve().is_relative_to(self.path.resolve()):
            raise LibraryError(f"{self.path / INDEX}: {who(row['name'], row)} has file {row['file']!r}, outside "
                               f"the library; expected {EXPERTS}/<name>.safetensors; {REBUILD}")
        if not path.is_file():
            raise LibraryError(f"library {self.path}: the file of {who(row['name'], row)}, {path}, is missing; "
                               f"expected {EXPERTS}/<name>.safetensors as build wrote it; {REBUILD}")
        return path

    def _check_files(self) -> None:
        """Every expert file exists, is whole, and holds the tensor names and shapes of the first."""
        first = None
        for row in self.experts:
            path = self._file(row)
            shapes = tensorfile.shapes(path, lambda m: LibraryError(f"{who(row['name'], row)}: {m}"), "expert")
            if first is None:
                first = (path, shapes)
            elif shapes != first[1]:
                key = next(k for k in sorted(set(shapes) | set(first[1])) if shapes.get(k) != first[1].get(k))
                raise LibraryError(f"library {self.path}: {path} has `{key}` {shapes.get(key, 'missing')}, but "
                                   f"{first[0]} has {first[1].get(key, 'missing')}; expected the same tensors "
                                   f"in every expert; {REBUILD}")
        if self.kind == "lora":  # lora_stack reads <module>.lora_A / .lora_B of every compat target
            targets = self.compat.get("targets") or []
            want = {f"{m}.lora_{ab}" for m in targets for ab in "AB"}
            if set(first[1]) != want:
                raise LibraryError(f"library {self.path}: {first[0]} holds {len(first[1])} tensors, but "
                                   f"{INDEX}'s compat.targets give {len(want)} (<module>.lora_A and .lora_B per "
                                   f"target); {REBUILD}")

    def tensors(self, name: str) -> dict:
        row = self._row(name)
        return tensorfile.load(self._file(row), lambda m: LibraryError(f"{who(name, row)}: {m}"), "expert")

    def lora_stack(self) -> dict:
        """{module: (A [E, r, d_in], B [E, d_out, r])} over the experts, in index order."""
        if self.kind != "lora":
            raise LibraryError(f"library {self.path} holds {self.kind} experts; this needs LoRA experts")
        # Filled one expert at a time into preallocated stacks, so that loading E experts holds
        # E experts' tensors plus one file's, not twice E (all files read, then stacked).
        out = {}
        for e, name in enumerate(self.names):
            t = self.tensors(name)
            for m in self.compat["targets"]:
                if m not in out:
                    A, B = t[f"{m}.lora_A"], t[f"{m}.lora_B"]
                    out[m] = (A.new_empty((len(self.names), *A.shape)), B.new_empty((len(self.names), *B.shape)))
                out[m][0][e].copy_(t[f"{m}.lora_A"])
                out[m][1][e].copy_(t[f"{m}.lora_B"])
            del t
        return out

    def stored(self, key: str) -> dict | None:
        """DIR/cache/<key>.safetensors when it is there, whole and of this library; else None."""
        path = self.path / CACHE / f"{key}.safetensors"
        if path.is_file():
            try:
                with safe_open(str(path), "pt") as f:
                    fresh = (f.metadata() or {}).get("library") == self.id
                if fresh:
                    return load_file(path)
            except (OSError, SafetensorError) as e:  # e.g. a write cut short: recomputed and rewritten
                log.warning("library cache %s cannot be read (%s): recomputing it", path, tensorfile.reason(e))
        return None

    def cached(self, key: str, compute) -> dict:
        """The tensors `compute()` returns, stored once in DIR/cache/<key>.safetensors and read back
        afterwards. A read-only library recomputes them each time (with a warning)."""
        found = self.stored(key)
        if found is not None:
            return found
        path = self.path / CACHE / f"{key}.safetensors"
        tensors = {k: v.contiguous() for k, v in compute().items()}
        try:
            path.parent.mkdir(exist_ok=True)
            tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
            save_file(tensors, tmp, metadata={"library": self.id})
            os.replace(tmp, path)  # concurrent runs each write whole files; the last one stays
        except OSError as e:
            log.warning("library cache %s not written (%s): it is recomputed on every load", path, e)
        return tensors
