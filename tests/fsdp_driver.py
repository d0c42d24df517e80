"""Several train.py runs in one process (one torchrun launch), for tests/test_fsdp.py:

    [torchrun --nproc-per-node 2] python tests/fsdp_driver.py OUT NAME=OVERRIDE,OVERRIDE... ...

Each NAME is trained into OUT/NAME with the composed config's overrides (comma-separated), as
train.py would train it, sharing one process group (and one import of torch) between runs."""
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[1]


def main(out: str, *runs: str) -> None:
    from mmpt.engine import distributed
    from mmpt.experiment import train

    with distributed.session():
        for spec in runs:
            name, _, over = spec.partition("=")
            with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
                cfg = compose(config_name="train", overrides=over.split(","))
            with open_dict(cfg):
                cfg.paths.output_dir = str(Path(out) / name)
            train(cfg)
            distributed.barrier()


if __name__ == "__main__":
    main(*sys.argv[1:])
