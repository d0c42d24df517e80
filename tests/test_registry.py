"""One registry style: every registered method and router has a YAML in conf/ with exactly its
config dataclass's fields (and the reverse), its values fit the dataclass's types, the YAML is the
one place of the defaults (the dataclass holds none, and the registry reads the YAML), and the
registries refuse what they should. (Library types and conf/finetune_type: tests/test_library.py.)"""
from dataclasses import MISSING, dataclass, fields, is_dataclass

import pytest
import yaml
from omegaconf import OmegaConf
from transformers import BertConfig, GPT2Config, LlamaConfig, T5Config

import mmpt.registry
from conftest import ROOT
from mmpt.errors import ConfigError
from mmpt.methods import METHODS
from mmpt.models import FAMILIES
from mmpt.models.family import family_of
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
def test_every_entry_has_a_yaml_with_exactly_its_fields_and_values_of_their_types(group, registry):
    names = {p.stem for p in (ROOT / "conf" / group).glob("*.yaml")}
    assert names == set(registry.names()), "a registered kind without a YAML, or a YAML without a kind"
    for entry in registry.entries():
        assert entry.yaml_path() == ROOT / "conf" / group / f"{entry.name}.yaml"
        doc = {k: v for k, v in yaml_of(group, entry.name).items() if k != "defaults"}
        assert list(doc) == entry.option_names(), entry.name  # the same keys, in the same order
        cfg = entry.default_config()  # merged into the typed dataclass: a value of the wrong type fails
        assert [k for k in cfg if OmegaConf.is_missing(cfg, k)] == [], entry.name
        assert OmegaConf.to_container(cfg) == doc, entry.name  # (16 == 16.0: an int YAML value of a float)


@pytest.mark.parametrize("registry", [METHODS, ROUTERS])
def test_the_yaml_is_the_one_place_of_the_defaults(registry):
    for entry in registry.entries():
        held = [f.name for f in fields(entry.config) if f.default is not MISSING or f.default_factory is not MISSING]
        assert held == [], f"{entry.config.__name__} repeats defaults of conf/{registry.group}/{entry.name}.yaml"


def test_defaults_come_from_the_groups_yaml_and_else_from_the_dataclass(tmp_path, monkeypatch):
    @dataclass
    class Options:
        name: str = "w"
        size: int = 3      # an extension's dataclass may keep defaults: the YAML wins

    (tmp_path / "widget").mkdir()
    (tmp_path / "widget" / "w.yaml").write_text("# @package _global_\nwidget:\n  name: w\n  size: 5\nother: 1\n")
    monkeypatch.setattr(mmpt.registry, "CONF", tmp_path)
    reg = Registry("widget", key="widget.name", group="widget")
    reg.register("w", config=Options)(object)
    reg.register("v", config=Options)(object)  # no YAML
    assert reg.get("w").defaults() == {"name": "w", "size": 5}
    assert reg.get("w").default_config(size=7).size == 7 and reg.get("w").default_config().size == 5
    assert reg.get("v").defaults() == {"name": "w", "size": 3}
    (tmp_path / "widget" / "w.yaml").write_text("name: w\nsize: five\n")  # not @package _global_: the file
    with pytest.raises(Exception, match="size"):
        reg.get("w").default_config()


def test_adapter_targets_are_the_families_and_the_method_yamls_name_their_sets():
    """No model YAML repeats the families' target regexes; every set a method YAML names exists in
    every family, for each kind of backbone the families take."""
    for path in (ROOT / "conf" / "model").glob("*.yaml"):
        assert "targets" not in yaml.safe_load(path.read_text()), path
    named = {yaml_of("method", e.name)["target_modules"] for e in METHODS.entries() if "target_modules" in e.option_names()}
    assert named == {"lora", "poly", "ia3"}
    for config in (T5Config(), BertConfig(), LlamaConfig(), GPT2Config()):
        sets = family_of(config).targets(config)
        assert named | {"poly_ffn"} <= set(sets), config.model_type


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
