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
    # a method's and a router's options with the type from its config dataclass, the YAML's default and comment
    assert "| <code>method.rank</code> | int | <code>8</code> | r |" in page
    assert "| <code>router.noise_std</code> | float &#124; None | <code>null</code> | std of the training noise" in page
    assert "config dataclass <code>LoRAConfig</code> (<code>mmpt/methods/lora.py</code>)" in page
    # a value with a regex `|` stays in its cell
    assert gen.code(r".*(q|v)") == "<code>.*(q&#124;v)</code>"


def test_types_of_a_config_dataclass():
    from dataclasses import dataclass

    @dataclass
    class Cfg:
        name: str
        rank: int
        noise: float | None

    assert gen.types_of(Cfg) == {"name": "str", "rank": "int", "noise": "float | None"}


def test_keys_of_reads_nesting_values_and_comments(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("# header\na:\n  b: 1   # the b\n  # about c\n  c: 'x # not a comment'\nd: [1, 2]  # list\n")
    assert gen.keys_of(f) == [("a.b", 1, "the b"), ("a.c", "x # not a comment", "about c"), ("d", [1, 2], "list")]
