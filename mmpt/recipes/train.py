"""train(cfg): one training run from a composed config to metrics.json (python train.py ...)."""
from mmpt.context import RunContext
from mmpt.data.mixture import tasks_of
from mmpt.engine.meta import RunMeta
from mmpt.export.importer import init_from
from mmpt.models import backbone_name
from mmpt.recipes.common import fit_and_test, load_data, method_groups
from mmpt.recipes.start import begin
from mmpt.runs import build_run_model


def train(cfg, ctx: RunContext = RunContext()) -> dict:
    run = begin(cfg, ctx)
    run.enter()
    model = build_run_model(cfg)
    if cfg.get("init_from"):  # an adapter trained elsewhere (PEFT); mmpt.export writes them
        init_from(cfg.init_from, model, cfg.model, tasks_of(cfg.dataset))
    data = load_data(cfg, model.tokenizer, cfg.seed)
    meta = RunMeta(cfg.method.name, backbone_name(cfg.model), cfg.dataset.name, cfg.seed)
    return fit_and_test(run, model, data, method_groups(model), meta)
