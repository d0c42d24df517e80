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

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from mmpt.engine import checkpoint, distributed
from mmpt.engine.evaluate import autocast, evaluate, to_device
from mmpt.engine.optim import build_optimizer
from mmpt.errors import ConfigError, MMPTError

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
    pruned: bool = False       # on_eval stopped the run (a sweep's pruner)


def schedule_length(tcfg, batches_per_epoch: int) -> int:
    """Total optimizer steps: trainer.max_steps if set (0 = evaluate only), else epochs x steps per epoch."""
    accum = tcfg.grad_accum
    per_epoch = math.ceil(batches_per_epoch / accum)
    if tcfg.get("max_steps") is not None:
        return int(tcfg.max_steps)
    return int(tcfg.epochs) * per_epoch


def validate_trainer(t) -> None:
    for key in ("batch_size", "grad_accum"):
        if not isinstance(t.get(key), int) or t.get(key) < 1:
            raise ConfigError(f"trainer.{key}", f"expected an integer >= 1, got {t.get(key)!r}")
    if t.get("max_steps") is not None and (not isinstance(t.max_steps, int) or t.max_steps < 0):
        raise ConfigError("trainer.max_steps", f"expected null, 0 (evaluate only) or an integer >= 1, "
                          f"got {t.max_steps!r}")
    if t.get("max_steps") is None and not (isinstance(t.get("epochs"), int) and t.epochs >= 1):
        raise ConfigError("trainer.epochs", "set trainer.epochs >= 1 or trainer.max_steps >= 0")
    if t.get("eval_mode") not in ("rank", "generate"):
        raise ConfigError("trainer.eval_mode", f"expected 'rank' or 'generate', got {t.get('eval_mode')!r}")
    for key in ("eval_every", "patience"):
        v = t.get(key)
        if v is not None and (not isinstance(v, int) or v < 0):
            raise ConfigError(f"trainer.{key}", f"expected null or an integer >= 0, got {v!r}")
    if t.get("precision", "fp32") not in ("fp32", "bf16"):
        raise ConfigError("trainer.precision", f"expected 'fp32' or 'bf16', got {t.get('precision')!r}")
    if t.get("grad_clip") is not None and t.grad_clip <= 0:
        raise ConfigError("trainer.grad_clip", f"expected null or a positive norm, got {t.grad_clip}")


class Trainer:
    """Fits `model` on data.train, selecting on data.val; `run_dir/checkpoints/{last,best}`.

    on_eval(step, val metrics as logged) is called after every evaluation; True stops the run
    there, with Progress.pruned set (a sweep's pruner: mmpt/trial.py)."""

    def __init__(self, model, data, cfg, run_dir, logger, resume: bool = False, on_eval=None):
        self.model, self.data, self.cfg, self.t = model, data, cfg, cfg.trainer
        self.on_eval = on_eval
        self.logger, self.ckpt = logger, run_dir / "checkpoints"
        self.main = data.task.main_metric
        self.device = distributed.device()
        model.to(self.device)
        # DDP averages gradients across processes; routes/skills a batch does not use get none.
        self.net = model if distributed.world_size() == 1 else DistributedDataParallel(
            model, find_unused_parameters=True,
            device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.total = schedule_length(self.t, data.train_batches)
        self.opt, self.sched, self.groups = build_optimizer(model, cfg.optimizer, self.total)
        self.p = Progress()
        self.meta = {"method": cfg.method.name, "model": cfg.model.get("name_or_path") or cfg.model.get("build")}
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
            self.opt.load_state_dict(state["optimizer"])
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
        state = {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                 "progress": asdict(self.p)}
        if distributed.is_main():
            checkpoint.save(self.ckpt / "last", self.model, {**self.meta, "step": self.p.step}, state)
        distributed.barrier()

    def _eval(self) -> bool:
        """Evaluate on val, keep the best weights, save `last`; return True to stop early."""
        with checkpoint.rng_untouched():  # whether and how often we evaluate leaves training alone
            metrics, rows, stats = evaluate(self.model, self.data.loader("val"), self.data.val, self.data.task,
                                            self.t.eval_mode, self.t.max_new_tokens, self.t.get("precision"),
                                            self.t.get("rank_length_norm", 0))
        score = metrics[self.main]
        scores = {f"val/{k}": v for k, v in {**metrics, **stats}.items()}  # the names metrics.json uses
        self.p.evaluated_at = self.p.step
        if score > self.p.best:
            self.p.best, self.p.best_step, self.p.bad_evals = score, self.p.step, 0
            if distributed.is_main():
                # the scores and predictions travel with the weights: the final evaluation reuses
                # them instead of scoring val again (experiment.final_eval)
                val_eval = {"metrics": metrics, "stats": stats, "rows": rows}
                checkpoint.save(self.ckpt / "best", self.model, {**self.meta, "step": self.p.step, "val_eval": val_eval})
        else:
            self.p.bad_evals += 1
        self.logger.log("eval", {**scores, "val/best": self.p.best, "epoch": self.p.epoch}, self.p.step)
        self._save_last()
        if self.on_eval is not None:  # rank 0 decides, every rank stops with it
            stop = self.on_eval(self.p.step, scores) if distributed.is_main() else None
            self.p.pruned = self.p.pruned or bool(distributed.broadcast_object(stop))
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
        with autocast(self.device, self.t.get("precision")):
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
        bar = tqdm(total=self.total, initial=self.p.step, desc="train", dynamic_ncols=True,
                   disable=not self.logger.enabled)
        while not stop:
            start, micro, loss_sum = time.perf_counter(), 0, 0.0
            with checkpoint.rng_untouched():  # iter() draws a seed; a resumed run does it mid-epoch
                batches = iter(self.data.loader("train", epoch=self.p.epoch, skip=self.p.batch))
            for batch in batches:
                loss, value = self._loss(batch)
                if not math.isfinite(value):
                    raise TrainingError(f"loss is {value} at step {self.p.step} (epoch {self.p.epoch}); "
                                        "lower the learning rates (optimizer.groups.*.lr) or enable trainer.grad_clip")
                (loss / accum).backward()
                micro, self.p.batch, loss_sum = micro + 1, self.p.batch + 1, loss_sum + value
                last_batch = self.p.batch == self.data.train_batches
                if micro % accum and not last_batch:
                    continue
                self._step()
                bar.update(1)
                lrs = {f"lr/{g['name']}": g["lr"] for g in self.opt.param_groups}
                bar.set_postfix(loss=f"{loss_sum / micro:.4f}", lr=f"{self.opt.param_groups[0]['lr']:.2e}")
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
