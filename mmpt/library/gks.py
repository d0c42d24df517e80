"""GenKnowSub (general knowledge subtraction, ACL 2025; PEFT's ArrowConfig(use_gks=True)).

`experts.general=[task, ...]` names general experts of the library (by task or name). Their mean A
and mean B are subtracted, once, from every other (task) expert's A and B, as PEFT's
ArrowLoraLinearLayer.gen_know_sub does; Arrow then routes over the task experts only. mmpt's B is
already times alpha / r, which equals PEFT's when the experts share alpha / r (the export writes
lora_alpha = r, so PEFT subtracts the same tensors).
"""
from mmpt.errors import ConfigError


def general_names(lib, general) -> list:
    """The library experts `general` names (each by expert name or by task), checked in one line."""
    general = list(general or [])
    by_task = {}
    for row in lib.experts:
        by_task.setdefault(row.get("task"), []).append(row["name"])
    names = []
    for g in general:
        found = [g] if g in lib.names else by_task.get(g, [])
        if not found:
            raise ConfigError("experts.general", f"{g!r} is not an expert of library {lib.path} "
                              f"(its experts: {lib.names})")
        names += [n for n in found if n not in names]
    if names and len(names) == len(lib.names):
        raise ConfigError("experts.general", "every expert of the library is general: no task expert is left to route")
    return names


def check(lib, ftype: str, general) -> list:
    """general_names, refused in one line for a type other than arrow."""
    if general and ftype != "arrow":
        raise ConfigError("experts.general", f"GenKnowSub (experts.general={list(general)}) is for "
                          f"finetune_type=arrow, not {ftype}")
    return general_names(lib, general)


def subtract(stack: dict, names: list, general: list) -> tuple:
    """(task names, {module: (A, B)} of the task experts minus the general experts' mean A and B)."""
    g = [names.index(n) for n in general]
    t = [i for i in range(len(names)) if i not in g]
    out = {}
    for m, (A, B) in stack.items():
        out[m] = (A[t] - A[g].mean(0), B[t] - B[g].mean(0)) if g else (A, B)
    return [names[i] for i in t], out
