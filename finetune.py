"""Fine-tune pre-trained skills, or a library's experts, on a held-out task:
    python finetune.py pretrained=<train.py run dir> dataset=rte finetune_type=Poly k_shot=16 seed=0
    python finetune.py library=<library dir> dataset=rte finetune_type=arrow k_shot=32 seed=0

Thin Hydra wrapper around mmpt.recipes.finetune; returns the optimized metric to sweepers.
"""
from pathlib import Path
import sys

import hydra

from mmpt.cli import main_wrapper, refuse_unknown_options
from mmpt.cli_keys import refuse_unknown_keys


@hydra.main(config_path="conf", config_name="finetune", version_base="1.3")
def main(cfg):
    from mmpt.recipes import finetune

    return main_wrapper(finetune, cfg)


if __name__ == "__main__":
    here = Path(__file__).parent  # conf/ and the finetune-only presets of conf/finetune.yaml's searchpath
    refuse_unknown_options([here / "conf", here / "mmpt" / "conf_finetune"], sys.argv[1:])
    refuse_unknown_keys(here / "conf", "finetune", sys.argv[1:])  # one line, not Hydra's seven
    main()
