"""The training loop: accumulation, clipping, schedule, periodic eval, best-val selection, resume.

Checkpoints are taken only at optimizer-step boundaries (after each eval), together with the RNG
state and the position in the epoch, so a resumed run replays exactly what an uninterrupted run
would have done: bitwise on CPU, whether it was stopped mid-epoch, at an epoch end or mid-save.
Evaluation and DataLoader iterator creation run under `checkpoint.rng_untouched`, so the random
stream training draws from (dropout, router noise) does not depend on where they happened.
"""
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mmpt import distributed
from mmpt.engine import checkpoint, cost, progress, recompute, sharding
from mmpt.engine.evaluate import autocast, evaluate, to_device
from mmpt.engine.optim import build_optimizer, check_groups
from mmpt.errors import MMPTError

log = logging.getLogger(__name__)


class TrainingError(MMPTError):
    """Training cannot go on (e.g. the loss became NaN)."""


@dataclass
class Progress:
    step: int = 0            # optimizer steps taken
    epoch: int = 0
    batch: int = 0           # micro-batches consumed in the current epoch
    best: float = -math.inf  # best val main metric so far
    best_step: int = -1
    bad_evals: int = 0       # evals since the last improvement (patience)
    evaluated_at: int = -1
    train_time_s: float = 0.0  # time in training steps, summed over the resumed parts of the run
    total_time_s: float = 0.0  # wall time up to the last checkpoint, summed likewise
    pruned: bool = False       # stopped by on_eval (a sweep's pruner), not by the schedule or patience
    tokens: int = 0            # tokens of the training batches so far (engine/cost.py)


def schedule_length(t, batches_per_epoch: int) -> int:
    """Total optimizer steps of TrainingSettings `t`: max_steps if set (0 = evaluate only), else
    epochs x steps per epoch."""
    if t.max_steps is not None:
        return t.max_steps
    return t.epochs * math.ceil(batches_per_epoch / t.grad_accum)


class Trainer:
    """Fits `model` on data.train, selecting on data.val; `run_dir/checkpoints/{last,best}`.

    The recipe hands over everything the loop needs: the model and data, `groups` ({name:
    parameters}: exactly what trains, each with its own lr), the run's `meta` (RunMeta), its
    `settings` (mmpt.settings.Settings: training, evaluation, optimizer), and `configurable`, the
    group names `optimizer.groups` may configure (default: those of `groups`).
    `on_eval(step, val metrics) -> bool`, if given, is told every evaluation's scores and returns
    True to stop the run there (a sweep pruning the trial: the recipe builds it, mmpt/trial.py).
    """

    def __init__(self, model, data, groups: dict, meta, settings, run_dir, logger, resume: bool = False,
                 configurable=None, on_eval=None):
        self.model, self.data, self.t, self.ev = model, data, settings.training, settings.evaluation
        self.logger, self.ckpt, self.on_eval = logger, Path(run_dir) / "checkpoints", on_eval
        self.main = data.task.main_metric
        self.device = distributed.device()
        strategy = sharding.strategy(self.t.strategy, model)  # ddp | fsdp (engine/sharding.py)
        check_groups(model, groups)
        # the groups by parameter name: moving and sharding the model may replace parameter objects
        names = {id(p): n for n, p in model.named_parameters()}
        by_name = {g: [names[id(p)] for p in ps] for g, ps in groups.items()}
        model.to(self.device)
        recompute.enable(model, self.t.gradient_checkpointing)
        self.net = sharding.wrap(model, strategy, self.device)
        params = dict(model.named_parameters())
        groups = {g: [params[n] for n in ns] for g, ns in by_name.items()}
        self.total = schedule_length(self.t, data.train_batches)
        self.opt, self.sched, self.groups = build_optimizer(groups, settings.optimizer, self.total, configurable)
        self.p = Progress()
        self.meta = {"method": meta.method, "model": meta.backbone}
        if resume:
            self._resume(run_dir)
        self._clock = time.perf_counter() - self.p.total_time_s

    def elapsed(self) -> float:
        """Wall seconds of this run: this process's so far plus those before the checkpoint."""
        return time.perf_counter() - self._clock

    def _resume(self, run_dir) -> None:
        last = checkpoint.find(self.ckpt / "last")
        if last is not None:
            checkpoint.load_weights(last, self.model)
            state = checkpoint.load_state(last)
            sharding.load_optimizer_state(self.model, self.opt, state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
            self.p = Progress(**state["progress"])
            checkpoint.set_rng_state(state["rng"])
            log.info("resumed from %s at step %d (epoch %d, batch %d)", last, self.p.step, self.p.epoch, self.p.batch)
        elif distributed.is_main():
            log.warning("resume=true: %s has no checkpoint; starting from scratch", run_dir)
        # what the interrupted process logged after its checkpoint is logged again from here
        self.logger.rewind(self.p.step)

    def _save_last(self) -> None:
        self.p.total_time_s = self.elapsed()
        state = {"optimizer": sharding.optimizer_state(self.model, self.opt), "scheduler": self.sched.state_dict(),
                 "progress": asdict(self.p)}
        weights = checkpoint.trainable_state(self.model)  # every process: fsdp gathers the shards
        if distributed.is_main():
            checkpoint.save(self.ckpt / "last", self.model, {**self.meta, "step": self.p.step}, state, weights)
        distributed.barrier()

    def _eval(self) -> bool:
        """Evaluate on val, keep the best weights, save `last`; return True to stop early."""
        with checkpoint.rng_untouched():  # whether and how often we evaluate leaves training alone
            metrics, rows, stats = evaluate(self.model, self.data.loader("val"), self.data.val, self.data.task,
                                            self.ev, desc=f"val (step {self.p.step})")
        score = metrics[self.main]
        scores = {f"val/{k}": v for k, v in {**metrics, **stats}.items()}  # the names metrics.json uses
        self.p.evaluated_at = self.p.step
        if score > self.p.best:
            self.p.best, self.p.best_step, self.p.bad_evals = score, self.p.step, 0
            weights = checkpoint.trainable_state(self.model)  # every process: fsdp gathers the shards
            if distributed.is_main():
                # the scores and predictions travel with the weights: the final evaluation reuses
                # them instead of scoring val again (recipes/common.py's final_eval)
                val_eval = {"metrics": metrics, "stats": stats, "rows": rows}
                checkpoint.save(self.ckpt / "best", self.model, {**self.meta, "step": self.p.step, "val_eval": val_eval},
                                weights=weights)
        else:
            self.p.bad_evals += 1
        self.logger.log("eval", {**scores, "val/best": self.p.best, "epoch": self.p.epoch}, self.p.step)
        if self.on_eval is not None:  # rank 0 decides, every rank stops with it
            stop = self.on_eval(self.p.step, scores) if distributed.is_main() else None
            self.p.pruned = self.p.pruned or bool(distributed.broadcast_object(stop))
        self._save_last()
        return self.p.pruned or (bool(self.t.patience) and self.p.bad_evals >= self.t.patience)

    def _step(self) -> None:
        if self.t.grad_clip:
            params = [p for g in self.opt.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.t.grad_clip)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.p.step += 1

    def _loss(self, global_batch):
        """This process's share of the mean token loss of the global batch."""
        batch = to_device(distributed.shard(global_batch), self.device)
        with autocast(self.device, self.t.precision):
            loss, _ = self.net(batch)
        n = distributed.world_size()
        if n == 1:
            return loss.float(), loss.item()
        # Weight by tokens so that DDP's gradient average equals the single-process mean loss.
        local = self.model.loss_terms(batch)
        loss = loss.float() * local * n / distributed.all_sum(local)
        return loss, distributed.all_sum(loss.detach()).item() / n

    def fit(self) -> Progress:
        for name, n, lr, wd in self.groups:
            log.info("group %-16s %10d params  lr %.2e  weight_decay %.1e", name, n, lr, wd)
        self.model.train()
        accum, stop = self.t.grad_accum, self.p.step >= self.total
        bar = progress.bar(self.total, "train", enabled=self.logger.enabled, initial=self.p.step)
        while not stop:
            start, micro, loss_sum = time.perf_counter(), 0, 0.0
            with checkpoint.rng_untouched():  # iter() draws a seed; a resumed run does it mid-epoch
                batches = iter(self.data.loader("train", epoch=self.p.epoch, skip=self.p.batch))
            for batch in batches:
                loss, value = self._loss(batch)
                self.p.tokens += cost.batch_tokens(batch)
                if not math.isfinite(value):
                    raise TrainingError(f"loss is {value} at step {self.p.step} (epoch {self.p.epoch}); "
                                        "lower the learning rates (optimizer.groups.*.lr) or enable trainer.grad_clip")
                (loss / accum).backward()
                micro, self.p.batch, loss_sum = micro + 1, self.p.batch + 1, loss_sum + value
                last_batch = self.p.batch == self.data.train_batches
                if micro % accum and not last_batch:
                    continue
                self._step()
                lrs = {f"lr/{g['name']}": g["lr"] for g in self.opt.param_groups}
                bar.set_postfix(loss=f"{loss_sum / micro:.4f}", lr=f"{self.opt.param_groups[0]['lr']:.2e}",
                                refresh=False)  # drawn (or logged) by the update
                bar.update(1)
                if self.p.step % self.t.log_every == 0:
                    self.logger.log("train", {"train/loss": loss_sum / micro, **lrs, "epoch": self.p.epoch},
                                    self.p.step)
                micro, loss_sum = 0, 0.0
                if last_batch:  # the epoch ends here: the position rolls over before any save
                    self.p.epoch, self.p.batch = self.p.epoch + 1, 0
                self.p.train_time_s += time.perf_counter() - start
                if (self.t.eval_every and self.p.step % self.t.eval_every == 0) or last_batch:
                    stop = self._eval()
                start = time.perf_counter()  # evaluation time is not training time
                checkpoint.kill_point("step", self.p.step)  # test hook (tests/test_resume.py)
                if self.p.step >= self.total:
                    stop = True
                if stop:
                    break
        bar.close()
        # Also the whole of max_steps=0 (evaluate only): the loaded weights are scored once on val
        # and kept as `best`, so the final evaluation (and an export) uses exactly them.
        if self.p.evaluated_at != self.p.step:
            self._eval()
        return self.p
