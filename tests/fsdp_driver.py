"""Several train.py runs in one process (one torchrun launch), for tests/test_fsdp.py:

    [torchrun --nproc-per-node 2] python tests/fsdp_driver.py OUT NAME=OVERRIDE,OVERRIDE... ...

Each NAME is trained into OUT/NAME with the composed config's overrides (comma-separated), as
train.py would train it (finetune.py when the overrides start with `finetune:`), sharing one
process group (and one import of torch) between runs. Rank 0 saves each run's config in
OUT/NAME/.hydra/, as Hydra would, so a later run can fine-tune it."""
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

ROOT = Path(__file__).resolve().parents[1]


def main(out: str, *runs: str) -> None:
    from mmpt import distributed
    from mmpt.recipes import train
    from mmpt.recipes import finetune

    with distributed.session():
        for spec in runs:
            name, _, over = spec.partition("=")
            script, fine = (finetune, True) if over.startswith("finetune:") else (train, False)
            with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
                cfg = compose(config_name="finetune" if fine else "train",
                              overrides=over.removeprefix("finetune:").split(","))
            with open_dict(cfg):
                cfg.paths.output_dir = str(Path(out) / name)
            if distributed.is_main():
                (Path(out) / name / ".hydra").mkdir(parents=True, exist_ok=True)
                OmegaConf.save(cfg, Path(out) / name / ".hydra" / "config.yaml")
            distributed.barrier()
            script(cfg)
            distributed.barrier()


if __name__ == "__main__":
    main(*sys.argv[1:])
