"""One registry style: every registered method and router has a YAML in conf/ with exactly its
config dataclass's keys and defaults (and the reverse), and the registries refuse what they
should. (Library types and conf/finetune_type: tests/test_library.py.)"""
from dataclasses import MISSING, dataclass, fields, is_dataclass

import pytest
import yaml

from conftest import ROOT
from mmpt.errors import ConfigError
from mmpt.methods import METHODS
from mmpt.models import FAMILIES
from mmpt.registry import Registry
from mmpt.routers import ROUTERS


def defaults(config) -> dict:
    """A dataclass's defaults; a nested options block (a dataclass default) as its dict, a tuple as
    the list YAML writes."""
    out = {f.name: f.default for f in fields(config) if f.default is not MISSING}
    return {k: defaults(v) if is_dataclass(v) else list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def yaml_of(group: str, name: str) -> dict:
    node = yaml.safe_load((ROOT / "conf" / group / f"{name}.yaml").read_text())
    return node.get("method", node) if group == "method" else node


@pytest.mark.parametrize("group,registry", [("method", METHODS), ("router", ROUTERS)])
def test_every_entry_has_a_yaml_with_its_keys_and_defaults(group, registry):
    names = {p.stem for p in (ROOT / "conf" / group).glob("*.yaml")}
    assert names == set(registry.names()), "a registered kind without a YAML, or a YAML without a kind"
    for entry in registry.entries():
        doc = {k: v for k, v in yaml_of(group, entry.name).items() if k != "defaults"}
        assert set(doc) == set(entry.option_names()), entry.name
        assert doc == defaults(entry.config), entry.name  # interpolations compare as their text


def test_families_cover_the_in_process_builds():
    builds = {b for e in FAMILIES.entries() for b in e.obj.tiny}
    assert builds == {"t5_tiny", "llama_tiny", "gpt2_tiny"}
    assert {e.obj().peft_task_type for e in FAMILIES.entries()} == {"SEQ_2_SEQ_LM", "FEATURE_EXTRACTION", "CAUSAL_LM"}


def test_a_registry_refuses_a_second_entry_of_a_name_and_names_the_key_of_an_unknown_one():
    reg = Registry("widget", key="widget.name")

    @dataclass
    class Options:
        size: int = 3

    reg.register("a", config=Options)(object)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a")(int)
    with pytest.raises(TypeError, match="dataclass"):
        reg.register("b", config=dict)
    with pytest.raises(ConfigError, match=r"`widget\.name`: expected one of \['a'\], got 'z'"):
        reg.get("z")
    assert reg.get("a").default_config(size=4).size == 4 and reg.get("a").option_names() == ["size"]
    reg.unregister("a")
    assert "a" not in reg
