"""What the engine is told about a run besides its objects (model, data, parameter groups, settings)."""
from dataclasses import dataclass


@dataclass(frozen=True)
class RunMeta:
    method: str        # the method whose parameters the checkpoints hold (checked on load)
    backbone: str      # the backbone's name (mmpt.models.backbone_name)
    dataset: str       # the task or mixture (`dataset.name`)
    seed: int
    label: str = ""    # the run's kind in logs and W&B names/tags (e.g. `finetune_Poly`); default: method

    @property
    def kind(self) -> str:
        return self.label or self.method
