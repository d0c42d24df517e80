"""The configuration reference (docs/reference/configuration.md) is what scripts/gen_config_reference.py
makes from conf/ and the config dataclasses today: a changed key, default or comment fails here
until the page is regenerated."""
import importlib.util

from conftest import ROOT

spec = importlib.util.spec_from_file_location("gen_config_reference", ROOT / "scripts" / "gen_config_reference.py")
gen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen)


def test_the_committed_reference_is_the_generated_one():
    assert gen.PAGE.read_text() == gen.render(), "stale: run python scripts/gen_config_reference.py"


def test_the_reference_names_every_option_key_default_and_comment():
    page = gen.render()
    for path in (ROOT / "conf").rglob("*.yaml"):
        group = "/".join(path.parent.relative_to(ROOT / "conf").parts)
        if group:
            assert f"### `{group}={path.stem}`" in page, path
    # a key of a group file under its package, its default and its comment (conf/hydra/sweeper/...)
    assert ("| <code>hydra.sweeper.max_trials</code> | <code>null</code> | cap on the study's trials "
            "across all processes") in page
    assert "| <code>trainer.gradient_checkpointing</code> | <code>false</code> | recompute each" in page
    assert "| <code>method.rank</code> | <code>8</code> | r |" in page
    # a value with a regex `|` stays in its cell
    assert "<code>.*(SelfAttention&#124;EncDecAttention)" in page
    # the registry's config dataclass of each method and router is named
    assert "Config dataclass: <code>LoRAConfig</code> (<code>mmpt/methods/lora.py</code>)" in page
    assert "Config dataclass: <code>MoEConfig</code>" in page


def test_a_dataclass_field_missing_from_or_differing_with_the_yaml_is_listed():
    from dataclasses import dataclass

    @dataclass
    class Cfg:
        name: str = "x"
        rank: int = 8
        alpha: int = 16
        hidden: float = 0.5

    rows = [("method.name", "x", ""), ("method.rank", 4, ""), ("method.alpha", 16, "")]
    assert gen.dataclass_rows(Cfg, "method", rows) == [
        ("method.rank", 8, "the YAML sets 4"), ("method.hidden", 0.5, "dataclass only: not in the YAML")]


def test_keys_of_reads_nesting_values_and_comments(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("# header\na:\n  b: 1   # the b\n  # about c\n  c: 'x # not a comment'\nd: [1, 2]  # list\n")
    assert gen.keys_of(f) == [("a.b", 1, "the b"), ("a.c", "x # not a comment", "about c"), ("d", [1, 2], "list")]
