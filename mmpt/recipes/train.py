"""train(cfg): one training run from a composed config to metrics.json (python train.py ...)."""
from transformers import set_seed

from mmpt.data.mixture import tasks_of
from mmpt import distributed
from mmpt.engine import cost
from mmpt.engine.loop import validate_trainer
from mmpt.engine.logging import RunLogger
from mmpt.engine.meta import RunMeta
from mmpt.errors import ConfigError
from mmpt.export.importer import init_from
from mmpt.models import backbone_name
from mmpt.recipes.common import fit_and_test, load_data, method_groups
from mmpt.runs import build_run_model, run_dir


def train(cfg) -> dict:
    validate_trainer(cfg.trainer)
    if not isinstance(cfg.get("seed"), int):
        raise ConfigError("seed", f"expected an integer, got {cfg.get('seed')!r}")
    out = run_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    cost.start_run(distributed.device())  # peak_mem_mb: this run's own, not an earlier job's in this process
    set_seed(cfg.seed)
    model = build_run_model(cfg)
    if cfg.get("init_from"):  # an adapter trained elsewhere (PEFT); mmpt.export writes them
        init_from(cfg.init_from, model, cfg.model, tasks_of(cfg.dataset))
    data = load_data(cfg, model.tokenizer, cfg.seed)
    meta = RunMeta(cfg.method.name, backbone_name(cfg.model), cfg.dataset.name, cfg.seed)
    return fit_and_test(cfg, model, data, method_groups(model), meta, out, RunLogger(out, meta, cfg))
