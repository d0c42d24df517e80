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


def check_compatible(experts: list) -> dict:
    """The compat dict every expert shares; else one line naming the odd expert (the one whose
    value is the rarest) and how it differs."""
    keys = list(dict.fromkeys(k for e in experts for k in e.compat))
    for key in keys:
        values = [json.dumps(e.compat.get(key), sort_keys=True) for e in experts]
        counts = Counter(values)
        if len(counts) > 1:
            common = counts.most_common(1)[0][0]
            odd = next(e for e, v in zip(experts, values) if counts[v] == min(counts.values()) and v != common)
            others = next(e for e, v in zip(experts, values) if v == common)
            a, b = odd.compat.get(key), others.compat.get(key)
            raise LibraryError(f"expert `{odd.name}` ({odd.info.get('source')}) has {key} {_describe(a, b)}, "
                               f"but `{others.name}` has {_describe(b, a)}: a library holds experts of one "
                               "backbone, targets and rank")
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


class Library:
    """A library directory, read: its index, each expert's tensors, and cached derived tensors."""

    def __init__(self, path):
        self.path = Path(path)
        index = self.path / INDEX
        if not index.is_file():
            raise LibraryError(f"library={self.path}: no {INDEX}; expected a directory written by "
                               "`python -m mmpt.library build`")
        try:
            self.index = json.loads(index.read_text())
        except json.JSONDecodeError as e:
            raise LibraryError(f"{index}: not valid JSON ({e})") from None
        if self.index.get("format") != FORMAT:
            raise LibraryError(f"{index}: format {self.index.get('format')!r}, expected {FORMAT!r}")
        self.experts = self.index["experts"]
        self.names = [e["name"] for e in self.experts]
        self.compat, self.kind, self.id = self.index["compat"], self.index["kind"], self.index["id"]

    def tensors(self, name: str) -> dict:
        row = next(e for e in self.experts if e["name"] == name)
        path = self.path / row["file"]
        try:
            return load_file(path)
        except (OSError, SafetensorError) as e:
            raise LibraryError(f"expert `{name}`: cannot read {path} ({e})") from None

    def lora_stack(self) -> dict:
        """{module: (A [E, r, d_in], B [E, d_out, r])} over the experts, in index order."""
        if self.kind != "lora":
            raise LibraryError(f"library {self.path} holds {self.kind} experts; this needs LoRA experts")
        per = [self.tensors(n) for n in self.names]
        return {m: (torch.stack([t[f"{m}.lora_A"] for t in per]), torch.stack([t[f"{m}.lora_B"] for t in per]))
                for m in self.compat["targets"]}

    def cached(self, key: str, compute) -> dict:
        """The tensors `compute()` returns, stored once in DIR/cache/<key>.safetensors and read back
        afterwards. A read-only library recomputes them each time (with a warning)."""
        path = self.path / CACHE / f"{key}.safetensors"
        if path.is_file():
            try:
                with safe_open(str(path), "pt") as f:
                    fresh = (f.metadata() or {}).get("library") == self.id
                if fresh:
                    return load_file(path)
            except (OSError, SafetensorError):
                pass  # a broken cache file is recomputed
        tensors = {k: v.contiguous() for k, v in compute().items()}
        try:
            path.parent.mkdir(exist_ok=True)
            tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
            save_file(tensors, tmp, metadata={"library": self.id})
            os.replace(tmp, path)  # concurrent runs each write whole files; the last one stays
        except OSError as e:
            log.warning("library cache %s not written (%s): it is recomputed on every load", path, e)
        return tensors
