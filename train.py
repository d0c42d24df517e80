"""Train one method on one task (or a mixture):  python train.py method=prefix dataset=rte

Thin Hydra wrapper around mmpt.recipes.train; returns the optimized metric to sweepers.
"""
from pathlib import Path
import sys

import hydra

from mmpt.cli import main_wrapper, refuse_unknown_options
from mmpt.cli_keys import refuse_unknown_keys


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg):
    from mmpt.recipes import train

    return main_wrapper(train, cfg)


if __name__ == "__main__":
    refuse_unknown_options([Path(__file__).parent / "conf"], sys.argv[1:])
    refuse_unknown_keys(Path(__file__).parent / "conf", "train", sys.argv[1:])  # one line, not Hydra's seven
    main()
