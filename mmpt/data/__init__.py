"""Data layer: tasks (reader + formatter + verbalizers + metrics), splits, encoding, batching."""
from mmpt.data.base import Example, Task
from mmpt.data.collate import EncodedSplit, collate
from mmpt.data.sampler import LengthBucketBatchSampler, make_loader, num_batches
from mmpt.data.splits import load_splits, resolve_data_dir
from mmpt.data.tasks import TASKS, get_task

__all__ = ["Example", "Task", "TASKS", "get_task", "load_splits", "resolve_data_dir",
           "EncodedSplit", "collate", "LengthBucketBatchSampler", "make_loader", "num_batches"]
