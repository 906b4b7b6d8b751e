"""A model-agnostic trainer: it calls `model(x, avail)` and reads only `out.loss` and `out.terms`.

Resuming is exact: shuffling uses a generator seeded with `seed + epoch`, validation runs under its own fixed seed
(so it does not disturb training randomness), and checkpoints hold the RNG states, the optimiser and the partial
epoch. SIGINT/SIGTERM stop after the current step with a checkpoint; `torchrun` runs it on several processes.

The trainer owns the optimisation loop only: the run folder's files are `runfolder.RunFolder`'s, the checkpoint
layout is `checkpoint.TrainingState`, ranks and signals are `distributed`'s, the running means are `progress`'s.
"""
from __future__ import annotations

import functools
import math
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from . import distributed
from .checkpoint import BEST, LAST, TrainingState, read_checkpoint, read_trainer_settings, restore_modules, versions
from .datasets.loader import as_batches
from .devices import module_device, use_threads
from .distributed import Ranks, StopRequest
from .errors import CheckpointError, InputError, NonFiniteLossError  # noqa: F401 (CheckpointError re-exported)
from .progress import EpochBar, EpochSums, print_epoch, step_scalars
from .runfolder import RunFolder


def _optimizer_name(optimizer) -> str:
    """A readable name for `Trainer(optimizer=)`: "Adam" for None, else the class or function it calls."""
    if optimizer is None:
        return "Adam"
    while isinstance(optimizer, functools.partial):
        optimizer = optimizer.func
    return getattr(optimizer, "__name__", type(optimizer).__name__)


def _check_optimizer(optimizer) -> None:
    """InputError unless `optimizer` is None or a callable `params -> torch.optim.Optimizer`."""
    if optimizer is None or (callable(optimizer) and not isinstance(optimizer, torch.optim.Optimizer)):
        return
    raise InputError(f"Trainer(optimizer=) takes None (Adam with lr) or a callable params -> torch.optim.Optimizer, "
                     f"e.g. functools.partial(torch.optim.SGD, lr=0.1); got {type(optimizer).__name__}, which "
                     f"{'is built already' if isinstance(optimizer, torch.optim.Optimizer) else 'is not callable'}")


def _amp_settings(amp: bool, device: torch.device) -> tuple[bool, torch.dtype]:
    """Whether mixed precision runs (CUDA only; elsewhere a warning) and its dtype (bfloat16 where supported)."""
    use_amp = bool(amp) and device.type == "cuda"
    if amp and not use_amp:
        warnings.warn(f"amp=True is ignored on {device.type}: mixed precision runs on CUDA only", stacklevel=4)
    return use_amp, torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16


def _make_optimizer(optimizer, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Adam(params, lr) for None, else `optimizer(params)` (InputError unless that is an Optimizer)."""
    opt = torch.optim.Adam(params, lr=lr) if optimizer is None else optimizer(params)
    if not isinstance(opt, torch.optim.Optimizer):
        raise InputError(f"Trainer(optimizer=) returned {type(opt).__name__}, not a torch.optim.Optimizer")
    return opt


def _config_of(model: nn.Module) -> dict | None:
    """The model's `config()` (None for a model without one)."""
    return model.config() if hasattr(model, "config") else None


def _data_parallel(model: nn.Module, ranks: Ranks, device: torch.device, find_unused_parameters: bool) -> nn.Module:
    """The module that steps: `model` itself with one process, wrapped in DistributedDataParallel with several."""
    if ranks.world <= 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                               find_unused_parameters=find_unused_parameters)


def _to_device(x: dict, avail: torch.Tensor, device: torch.device) -> tuple[dict, torch.Tensor]:
    """A batch on `device`: x {name: [B, ...]}, avail [B, M]."""
    return {k: v.to(device, non_blocking=True) for k, v in x.items()}, avail.to(device, non_blocking=True)


def _apply_gradients(loss: torch.Tensor, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                     grad_clip: float | None) -> torch.Tensor | None:
    """Backward, clip the total norm to `grad_clip`, step; the norm instead of a step when it is not finite."""
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())  # [] (a scalar)
    if not torch.isfinite(norm).item() and not scaler.is_enabled():
        return norm  # a float16 scaler handles (and skips) its own overflows
    if grad_clip and torch.isfinite(norm):
        torch.nn.utils.clip_grads_with_norm_([p for g in opt.param_groups for p in g["params"]], grad_clip, norm)
    scaler.step(opt)
    scaler.update()
    return None


def _check_epochs(max_epochs) -> int:
    """`Trainer(max_epochs=)`: at least 1."""
    if int(max_epochs) < 1:
        raise InputError(f"Trainer(max_epochs=) must be >= 1 (epochs in all, a resumed run's included), got "
                         f"{max_epochs!r}")
    return int(max_epochs)


def _check_threads(threads):
    """`Trainer(threads=)`: None (torch's count within the usable CPUs) or an integer >= 1."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InputError(f"Trainer(threads=) must be an integer >= 1 or None, got {threads!r}")
    return threads


def _set_threads(threads: int | None, resume, device: torch.device) -> str | None:
    """Set torch's CPU threads (`devices.pick_threads`) and say why (None on a GPU); a resumed run keeps its
    checkpoint's count unless told otherwise, since CPU sums split by thread and exact resume needs the same split."""
    if device.type != "cpu":
        return None
    saved = read_trainer_settings(resume).get("threads") if resume is not None else None
    if threads is None and isinstance(saved, int) and not isinstance(saved, bool) and saved >= 1:
        torch.set_num_threads(saved)
        return "the resumed run's"
    return use_threads(threads)[1]


def _check_resume(state: TrainingState, now: dict, ranks: Ranks, where, on_cpu: bool) -> None:
    """Warn when a run resumed from `state` cannot reproduce an uninterrupted one; else set its RNG states."""
    keys = ("batch_size", "seed", "drop_last", "world") + (("threads",) if on_cpu else ())
    changed = [k for k in keys if k in state.trainer and state.trainer[k] != now[k]]
    if changed:
        warnings.warn(f"resuming with different {changed} than {where}: the run will not reproduce an "
                      "uninterrupted one exactly", stacklevel=5)
    if not distributed.restore_rng_states(state.rng, ranks):
        warnings.warn(f"{where} holds RNG states for {len(state.rng.get('torch', []))} process(es), not "
                      f"{ranks.world}; random draws will differ from an uninterrupted run", stacklevel=5)


def _interrupt_message(signame: str, path: Path | None, out: Path | None, epoch: int, step_in_epoch: int) -> str:
    """What an interrupted run prints: where its checkpoint is and how to resume."""
    if path is None:
        return f"mmvae: interrupted by {signame}; no run folder (out=None), so nothing was saved"
    return (f"mmvae: interrupted by {signame}; saved checkpoint {path} (epoch {epoch + 1}, {step_in_epoch} batches "
            f"done). Resume with `mmvae train ... --resume {out}` or Trainer(..., resume={str(path)!r})")


def _kept(out: Path | None) -> str:
    """What the run folder still holds after a stop on non-finite numbers (only finite states are ever saved)."""
    last = out / LAST if out is not None and (out / LAST).exists() else None
    return (f"the last checkpoint {last} is intact (saved with finite weights and loss)" if last else
            "no checkpoint was written")


def _nonfinite_error(streak: int, epoch: int, step_in_epoch: int, out: Path | None) -> NonFiniteLossError:
    """The error that ends a run after `streak` consecutive non-finite steps, saying whether a checkpoint is safe."""
    return NonFiniteLossError(
        f"{streak} consecutive steps had a non-finite loss or gradients (epoch {epoch + 1}, batch {step_in_epoch}); "
        f"stopped training. {_kept(out)}; try a lower lr or grad_clip, and check the data for NaN/inf")


def _check_weights(opt: torch.optim.Optimizer, step: int, epoch: int, out: Path | None) -> None:
    """NonFiniteLossError when a step left NaN or inf in the weights (a finite loss and gradients can still
    overflow them, e.g. lr = inf); they are never saved."""
    params = [p for g in opt.param_groups for p in g["params"]]
    if not params or torch.isfinite(torch.nn.utils.get_total_norm(params, norm_type=math.inf)).item():
        return
    raise NonFiniteLossError(f"step {step} (epoch {epoch + 1}) made the weights non-finite (lr "
                             f"{opt.param_groups[0].get('lr')}); stopped without saving them; {_kept(out)}; try a "
                             "lower lr or grad_clip")


def _check_epoch(entry: dict, out: Path | None) -> None:
    """NonFiniteLossError when a finished epoch's validation loss (else training loss) is not finite: such a
    state is never saved as last.pt or best.pt, nor called good."""
    key = "val/loss" if "val/loss" in entry else "train/loss"
    value = entry.get(key, math.nan)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return
    raise NonFiniteLossError(f"epoch {entry['epoch']}: {key} is {value}, so its state was not saved and training "
                             f"stopped; {_kept(out)}; try a lower lr or grad_clip, and check the data for NaN/inf")


def _apply_lr(opt: torch.optim.Optimizer, lr: float | None) -> float:
    """Set `lr` on every parameter group of a (restored) optimiser; None keeps its own. The lr in effect."""
    if lr is not None:
        for group in opt.param_groups:
            group["lr"] = lr
    return float(opt.param_groups[0]["lr"])


@torch.no_grad()
def _mean_terms(model: nn.Module, data, batch_size: int, seed: int, prefix: str, ranks: Ranks, use_amp: bool,
                amp_dtype: torch.dtype) -> dict[str, float]:
    """Batch-size-weighted means of the loss and terms over `data`, in eval mode, under the fixed seed `seed`."""
    device = module_device(model)
    was_training = model.training
    model.eval()
    sums = EpochSums()
    accel = device.type != "cpu"
    fork = {"devices": [device], "device_type": device.type} if accel else {"devices": []}  # CPU: its RNG only
    with torch.random.fork_rng(**fork):
        torch.manual_seed(seed)
        for x, avail, _ in data.batches(batch_size, shuffle=False, rank=ranks.rank, world=ranks.world):
            x, avail = _to_device(x, avail, device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                loss, terms = step_scalars(model(x, avail))
            sums.add(loss, terms, next(iter(x.values())).shape[0])
    model.train(was_training)
    return sums.means(prefix, ranks, device)


class Trainer:
    """Fits a model whose `forward(x, avail)` returns an object with `.loss` (scalar) and `.terms` (dict).

    out: run folder (None: no files; one Trainer at a time writes it, holding its lock). resume: checkpoint or
    run folder to continue from. lr: Adam's learning rate (None: 1e-3, or when resuming the checkpoint's; a value
    given is applied to the restored optimiser too).
    optimizer: None (Adam with `lr`) or a callable `params -> torch.optim.Optimizer`, such as
    `functools.partial(torch.optim.SGD, lr=0.1)` (a bare class is such a callable, but gets no `lr`).
    amp: mixed precision, CUDA only. max_nonfinite: consecutive non-finite steps tolerated (each skipped) before
    NonFiniteLossError. log_every: steps between progress-bar refreshes. extra_config: more JSON for
    `config.json` and the checkpoint (e.g. the dataset). threads: torch's CPU threads (None: `devices.pick_threads`).
    """

    def __init__(self, model: nn.Module, max_epochs: int = 10, batch_size: int = 128, lr: float | None = None,
                 optimizer=None, device: str | torch.device = "auto", seed: int = 0, out=None, amp: bool = False,
                 resume=None, progress: bool = True, max_nonfinite: int = 10, grad_clip: float | None = None,
                 checkpoint_every: int = 1, log_every: int = 10, drop_last: bool = False,
                 find_unused_parameters: bool = True, extra_config: dict | None = None, threads: int | None = None):
        _check_optimizer(optimizer)
        self.threads_arg = _check_threads(threads)
        self.model, self.optimizer_arg, self.device_arg = model, optimizer, device
        self.max_epochs, self.batch_size, self.seed = _check_epochs(max_epochs), int(batch_size), int(seed)
        self.lr_arg, self.lr = lr, 1e-3 if lr is None else float(lr)
        self.out, self.resume = (Path(out) if out is not None else None), resume
        self.amp, self.progress, self.max_nonfinite, self.grad_clip = amp, progress, int(max_nonfinite), grad_clip
        self.checkpoint_every, self.log_every, self.drop_last = max(1, int(checkpoint_every)), log_every, drop_last
        self.find_unused_parameters, self.extra_config = find_unused_parameters, dict(extra_config or {})
        self.history: list[dict] = []
        self.interrupted = False
        self.epoch = self.step_in_epoch = self.global_step = self.nonfinite_streak = 0
        self.best_val = math.inf
        self.use_amp, self.amp_dtype = False, torch.float16  # set by fit for its device
        self.folder: RunFolder | None = None  # opened by fit, on rank 0 only

    def settings(self) -> dict:
        """The trainer's settings as JSON-able values."""
        return {"max_epochs": self.max_epochs, "batch_size": self.batch_size, "lr": self.lr, "seed": self.seed,
                "amp": self.amp, "grad_clip": self.grad_clip, "max_nonfinite": self.max_nonfinite,
                "checkpoint_every": self.checkpoint_every, "drop_last": self.drop_last,
                "optimizer": _optimizer_name(self.optimizer_arg)}

    def _setup(self, ranks: Ranks, device: torch.device) -> None:
        """Seed, place the model, build optimiser, AMP and DDP, restore `resume`, and open the run folder."""
        torch.manual_seed(self.seed + ranks.rank)  # also seeds every CUDA device
        self.threads_why = _set_threads(self.threads_arg, self.resume, device)
        self.model.to(device)
        self.opt = _make_optimizer(self.optimizer_arg, [p for p in self.model.parameters() if p.requires_grad], self.lr)
        self.use_amp, self.amp_dtype = _amp_settings(self.amp, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.net = _data_parallel(self.model, ranks, device, self.find_unused_parameters)
        self.partial, self.partial_time = EpochSums(), 0.0
        self.folder = RunFolder(self.out) if self.out is not None and ranks.is_main else None
        if self.folder is not None and self.folder.lock.took_over:
            print(f"mmvae: {self.folder.folder}: {self.folder.lock.took_over}", file=sys.stderr)
        if self.resume is not None:
            self._restore(read_checkpoint(self.resume), ranks)
        self.lr = _apply_lr(self.opt, self.lr_arg if self.resume is not None else None)
        if self.folder is not None:
            self.folder.start({**self.extra_config, "model": _config_of(self.model), "trainer": self.settings(),
                               "seed": self.seed, "world_size": ranks.world, "device": str(device),
                               "versions": versions(), "threads": torch.get_num_threads()},
                              None if self.resume is None else
                              f"resumed from {self.resume} at epoch {self.epoch}, batch {self.step_in_epoch}")

    def _run_settings(self, ranks: Ranks) -> dict:
        """The settings a checkpoint records: exact resume needs the same world size and (on CPU, where sums are
        split by thread) thread count."""
        return {**self.settings(), "world": ranks.world, "threads": torch.get_num_threads()}

    def _restore(self, raw: dict, ranks: Ranks) -> None:
        """Continue from the checkpoint dict `raw`: weights, optimiser, counters, the partial epoch, RNG states."""
        state = restore_modules(raw, self.model, self.opt, self.scaler, self.resume)
        self.epoch, self.step_in_epoch, self.global_step = state.epoch, state.step_in_epoch, state.global_step
        self.nonfinite_streak, self.best_val, self.history = state.nonfinite_streak, state.best_val, state.history
        self.partial, self.partial_time = EpochSums(state.epoch_sums), state.epoch_time
        _check_resume(state, self._run_settings(ranks), ranks, self.resume, module_device(self.model).type == "cpu")

    def _save(self, names: list[str], ranks: Ranks, sums: EpochSums, epoch_time: float) -> Path | None:
        """Write the full training state to each of `names` in the run folder (a collective: call on all ranks)."""
        if self.out is None:
            return None
        rng = distributed.gather_rng_states(ranks)
        if self.folder is None:  # not rank 0: rank 0 writes
            return None
        return self.folder.save(names, TrainingState(
            model=self.model.state_dict(), optimizer=self.opt.state_dict(), epoch=self.epoch,
            global_step=self.global_step, step_in_epoch=self.step_in_epoch, config=_config_of(self.model),
            trainer=self._run_settings(ranks), extra=self.extra_config, history=self.history,
            scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
            nonfinite_streak=self.nonfinite_streak, best_val=self.best_val, epoch_sums=sums.state(),
            epoch_time=epoch_time, rng=rng))

    def _step(self, x, avail, sums: EpochSums, stop: StopRequest, ranks: Ranks, device: torch.device) -> bool:
        """One optimiser step (skipped when the loss or gradients are not finite); whether to stop after it."""
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            out = self.net(x, avail)
        loss_value, terms = step_scalars(out)
        bad, stopping = distributed.any_rank([not math.isfinite(loss_value), stop.requested is not None], ranks,
                                             device)
        ok = not bad
        if bad and math.isfinite(loss_value):
            self._warn("non-finite loss on another rank")
        elif bad:
            names = [k for k, v in terms.items() if not math.isfinite(v)] or ["none"]
            self._warn(f"non-finite loss ({loss_value}); non-finite terms: {', '.join(names)}")
        else:
            bad_norm = _apply_gradients(out.loss, self.opt, self.scaler, self.grad_clip)
            ok = bad_norm is None
            if ok:
                _check_weights(self.opt, self.global_step + 1, self.epoch, self.out)
                sums.add(loss_value, terms, next(iter(x.values())).shape[0])
            else:
                self._warn(f"non-finite gradients (norm {bad_norm.item()})")
        self.nonfinite_streak = 0 if ok else self.nonfinite_streak + 1
        self.step_in_epoch += 1
        self.global_step += 1
        if self.nonfinite_streak >= self.max_nonfinite:
            self.opt.zero_grad(set_to_none=True)
            raise _nonfinite_error(self.nonfinite_streak, self.epoch, self.step_in_epoch, self.out)
        return stopping

    def _warn(self, what: str) -> None:
        msg = (f"step {self.global_step + 1} (epoch {self.epoch + 1}, batch {self.step_in_epoch + 1}): {what}; "
               f"skipped without updating the weights ({self.nonfinite_streak + 1} consecutive)")
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        if self.folder is not None:
            self.folder.note(msg)

    def evaluate(self, data, prefix: str = "val/", ranks: Ranks | None = None) -> dict[str, float]:
        """Mean loss and terms over `data` (weighted by batch size), in eval mode, under a fixed seed."""
        ranks = ranks or Ranks()
        return _mean_terms(self.model, as_batches(data), self.batch_size, self.seed + ranks.rank, prefix, ranks,
                           self.use_amp, self.amp_dtype)

    def fit(self, train, val=None) -> list[dict]:
        """Train until `max_epochs` (counting epochs of a resumed run); the history of per-epoch dicts.

        train, val: `MultimodalDataset`s, or any torch `Dataset` yielding `(x dict, avail, y)` (read through a
        DataLoader; wrap it in `datasets.loader.LoaderDataset(ds, num_workers=...)` for workers)."""
        train, val = as_batches(train), as_batches(val)
        ranks, device = distributed.setup(self.device_arg)
        try:
            with StopRequest() as stop:
                self._setup(ranks, device)
                return self._fit(train, val, ranks, device, stop)
        finally:
            if self.folder is not None:
                self.folder.close()
            distributed.teardown(ranks)

    def _fit(self, train, val, ranks: Ranks, device: torch.device, stop: StopRequest) -> list[dict]:
        """The epochs left: train, record, checkpoint; on a signal, checkpoint and return early."""
        self.interrupted = False
        saved_at = self.epoch if self.resume is not None else -1
        while self.epoch < self.max_epochs:
            sums, t0 = self.partial, time.time() - self.partial_time
            self.partial, self.partial_time = EpochSums(), 0.0
            if self._train_epoch(train, sums, stop, ranks, device):
                return self._interrupted(stop, ranks, sums, time.time() - t0)
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
            names = self._record_epoch(sums, val, t0, ranks, device)
            if names:
                self._save(names, ranks, EpochSums(), 0.0)
                saved_at = self.epoch if LAST in names else saved_at
            if self.progress and ranks.is_main:
                print_epoch(self.history[-1])
            if distributed.any_rank([stop.requested is not None], ranks, device)[0]:
                return self._interrupted(stop, ranks, EpochSums(), 0.0, saved=saved_at == self.epoch)
        if saved_at != self.epoch:
            self._save([LAST], ranks, EpochSums(), 0.0)
        return self.history

    def _train_epoch(self, train, sums: EpochSums, stop: StopRequest, ranks: Ranks, device: torch.device) -> bool:
        """The current epoch's batches from `step_in_epoch` on, one step each; whether a stop was requested."""
        total = train.num_batches(self.batch_size, world=ranks.world, drop_last=self.drop_last) \
            if hasattr(train, "num_batches") else None
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        bar = EpochBar(total, self.step_in_epoch, f"epoch {self.epoch + 1}/{self.max_epochs}",
                       self.progress and ranks.is_main, self.log_every)
        self.model.train()
        for x, avail, _ in train.batches(self.batch_size, shuffle=True, generator=gen, start=self.step_in_epoch,
                                         rank=ranks.rank, world=ranks.world, drop_last=self.drop_last):
            stopping = self._step(*_to_device(x, avail, device), sums, stop, ranks, device)
            bar.update(self.step_in_epoch, sums)
            if stopping:
                bar.close()
                return True
        bar.close()
        return False

    def _record_epoch(self, sums: EpochSums, val, t0: float, ranks: Ranks, device: torch.device) -> list[str]:
        """Append the finished epoch's means (and validation) to the history; the checkpoint names it earns."""
        entry = {"epoch": self.epoch, **sums.means("train/", ranks, device)}
        if val is not None:
            entry.update(self.evaluate(val, "val/", ranks))
        entry["time"] = time.time() - t0
        self.history.append(entry)
        if self.folder is not None:
            self.folder.write_history(self.history)
        _check_epoch(entry, self.out)
        names = [LAST] if self.epoch % self.checkpoint_every == 0 or self.epoch == self.max_epochs else []
        if val is not None and entry["val/loss"] < self.best_val:
            self.best_val = entry["val/loss"]
            names.append(BEST)
        return names

    def _interrupted(self, stop: StopRequest, ranks: Ranks, sums: EpochSums, elapsed: float, saved=False) -> list:
        """Checkpoint the state after the last finished step and say how to resume."""
        self.interrupted = True
        path = self._save([LAST], ranks, sums, elapsed) if not saved else self.out / LAST if self.out else None
        if ranks.is_main:
            msg = _interrupt_message(stop.requested or "a signal on another rank", path, self.out, self.epoch,
                                     self.step_in_epoch)
            print(msg, file=sys.stderr, flush=True)
            if self.folder is not None:
                self.folder.note(msg)
        return self.history
