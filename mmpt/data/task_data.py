"""The splits of one task, encoded for a model's tokenizer, and their loaders (what the engine
trains and evaluates on; a mixture's MixtureData in mixture.py has the same interface)."""
from mmpt.data.collate import EncodedSplit
from mmpt.data.sampler import make_loader, num_batches


class TaskData:
    def __init__(self, task, splits: dict, tokenizer, dcfg, tcfg, seed: int, task_id: int = 0):
        self.task, self.t, self.seed = task, tcfg, seed
        self.train, self.val, self.test = splits["train"], splits["val"], splits["test"]
        self.bucket, self.pad_id = dcfg.get("bucket", True), tokenizer.pad_token_id
        # task_id: the routing row of this task (fine-tuning appends one after the pre-training tasks)
        self.encoded = {name: EncodedSplit(examples, tokenizer, dcfg.max_length, task.verbalizers, task_id=task_id)
                        for name, examples in splits.items()}
        self.train_batches = num_batches(self.encoded["train"], tcfg.batch_size)

    def loader(self, split: str, epoch: int = 0, skip: int = 0):
        train = split == "train"
        size = self.t.batch_size if train else self.t.eval_batch_size
        return make_loader(self.encoded[split], size, train=train, seed=self.seed, epoch=epoch,
                           bucket=self.bucket or not train, skip=skip, pad_id=self.pad_id)
