"""What a sweep searches: the grammar's grids (range() keeps its last value), and what a preset
(conf/hparams_search) gives against what the user chooses: the preset's method unless the user
names one, the user's sampler, the user's whole search space. Composed in-process, no trial run."""
import optuna
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import ROOT
from hydra_plugins.mmpt_optuna_sweeper import _search_space as search_space
from hydra_plugins.mmpt_optuna_sweeper._impl import OptunaSweep

pytestmark = pytest.mark.sweep


def grid(*params: str) -> list[dict]:
    space, fixed = search_space.parse(list(params))
    assert fixed == {}
    return search_space.grid_points(space)


def test_a_grid_over_range_keeps_its_last_value_ints_and_floats():
    assert grid("a=range(0, 3)") == [{"a": 0}, {"a": 1}, {"a": 2}]
    assert grid("b=range(0.1, 0.4, 0.1)") == [{"b": 0.1}, {"b": 0.2}, {"b": 0.3}]
    both = grid("a=range(0, 3)", "b=range(0.1, 0.4, 0.1)")
    assert len(both) == 9 and {(p["a"], p["b"]) for p in both} == {(a, b) for a in (0, 1, 2) for b in (0.1, 0.2, 0.3)}


def preset(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=["hparams_search=lora", *overrides], return_hydra_config=True)


def sweeper(cfg) -> OptunaSweep:
    kwargs = OmegaConf.to_container(cfg.hydra.sweeper)
    for key in ("_target_", "_recursive_"):
        kwargs.pop(key)
    sweep = OptunaSweep(**{**kwargs, "sampler": cfg.hydra.sweeper.sampler, "pruner": cfg.hydra.sweeper.pruner})
    sweep.config = cfg
    return sweep


@pytest.mark.parametrize("hparams_search,method", [("lora", "lora"), ("prefix", "prefix"),
                                                   ("prefix_routing", "prefix_routing")])
def test_every_preset_selects_the_method_its_space_needs_and_a_named_method_wins(hparams_search, method):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"hparams_search={hparams_search}"])
        assert cfg.method.name == method
        assert compose(config_name="train", overrides=[f"hparams_search={hparams_search}", "method=ia3"]).method.name == "ia3"


def test_the_preset_runs_tpe_and_the_sampler_a_user_picks_wins():
    assert isinstance(sweeper(preset())._sampler(0), optuna.samplers.TPESampler)
    picked = sweeper(preset("hydra/sweeper/sampler=random"))._sampler(0)
    assert type(picked) is optuna.samplers.RandomSampler
    assert sweeper(preset("hydra/sweeper/sampler=grid"))._is_grid()


def test_a_search_space_given_whole_on_the_command_line_replaces_the_presets():
    assert sweeper(preset())._space() == {"optimizer.groups.adapters.lr": "tag(log, interval(1e-5, 1e-2))",
                                          "method.rank": "choice(4, 8, 16)"}
    assert sweeper(preset("hydra.sweeper.params={method.rank:'choice(4,8)'}"))._space() == {"method.rank": "choice(4,8)"}
    # keys the preset's space has not: `++` (Hydra's struct hydra config), replaced all the same
    other = sweeper(preset("++hydra.sweeper.params={optimizer.groups.adapters.weight_decay:'choice(0.0,0.1)'}"))
    assert other._space() == {"optimizer.groups.adapters.weight_decay": "choice(0.0,0.1)"}


@pytest.mark.subprocess
def test_the_plugin_modules_hydra_imports_at_every_start_import_no_optuna_torch_or_sqlalchemy():
    """Hydra imports every module of hydra_plugins whose name has no leading `_` at each start:
    the plugin class and its registered settings (config.py)."""
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c",
                           "import hydra_plugins.mmpt_optuna_sweeper.resumable_optuna_sweeper, "
                           "hydra_plugins.mmpt_optuna_sweeper.config, mmpt.storage"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-1500:]
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert {"hydra_plugins.mmpt_optuna_sweeper.resumable_optuna_sweeper", "hydra_plugins.mmpt_optuna_sweeper.config"} <= imported
    assert not imported & {"optuna", "torch", "sqlalchemy"}
