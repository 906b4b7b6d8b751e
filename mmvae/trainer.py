"""A model-agnostic trainer: it calls `model(x, avail)` and reads only `out.loss` and `out.terms`.

Resuming is exact: shuffling uses a generator seeded with `seed + epoch`, validation runs under its own fixed seed
(so it does not disturb training randomness), and checkpoints hold the RNG states, the optimiser and the partial
epoch. SIGINT/SIGTERM stop after the current step with a checkpoint; `torchrun` runs it on several processes.
"""
from __future__ import annotations

import json
import math
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed as D
from .checkpoint import (BEST, LAST, config_differences, mismatch_report, model_config, read_checkpoint,
                         remove_stale_temporaries, save_checkpoint, versions)
from .errors import CheckpointError, NonFiniteLossError  # noqa: F401 (re-exported)
from .runlog import RunLog


class _Sums:
    """Batch-size-weighted sums of the loss and each term, for epoch means."""

    def __init__(self, state: dict | None = None):
        state = state or {}
        self.n, self.loss = state.get("n", 0.0), state.get("loss", 0.0)
        self.terms: dict[str, float] = dict(state.get("terms", {}))

    def add(self, loss: float, terms: dict[str, float], b: int) -> None:
        self.n += b
        self.loss += loss * b
        for k, v in terms.items():
            self.terms[k] = self.terms.get(k, 0.0) + v * b

    def state(self) -> dict:
        return {"n": self.n, "loss": self.loss, "terms": dict(self.terms)}

    def means(self, prefix: str, d: D.Dist, device: torch.device) -> dict[str, float]:
        keys = sorted(self.terms)  # every rank sees the same term names
        n, loss, *terms = D.all_sum([self.n, self.loss] + [self.terms[k] for k in keys], d, device)
        n = n or float("nan")
        return {f"{prefix}loss": loss / n, **{f"{prefix}{k}": v / n for k, v in zip(keys, terms)}}


def _scalars(out) -> tuple[float, dict[str, float]]:
    """The loss and the terms as Python floats, with one device sync."""
    names = list(out.terms)
    vals = torch.stack([out.loss.detach().float().mean()] + [out.terms[k].detach().float().mean() for k in names])
    loss, *terms = vals.cpu().tolist()
    return loss, dict(zip(names, terms))


class Trainer:
    """Fits a model whose `forward(x, avail)` returns an object with `.loss` (scalar) and `.terms` (dict).

    out: run folder (None: no files). resume: checkpoint or run folder to continue from.
    optimizer: None (Adam), an optimiser class (given `lr`), an instance, or a callable `params -> optimiser`.
    amp: mixed precision, CUDA only. max_nonfinite: consecutive non-finite steps tolerated (each skipped) before
    NonFiniteLossError. log_every: steps between progress-bar refreshes. extra_config: more JSON for
    `config.json` and the checkpoint (e.g. the dataset).
    """

    def __init__(self, model: nn.Module, max_epochs: int = 10, batch_size: int = 128, lr: float = 1e-3,
                 optimizer=None, device: str | torch.device = "auto", seed: int = 0, out=None, amp: bool = False,
                 resume=None, progress: bool = True, max_nonfinite: int = 10, grad_clip: float | None = None,
                 checkpoint_every: int = 1, log_every: int = 10, drop_last: bool = False,
                 find_unused_parameters: bool = True, extra_config: dict | None = None):
        self.model, self.optimizer_arg, self.device_arg = model, optimizer, device
        self.max_epochs, self.batch_size, self.lr, self.seed = int(max_epochs), int(batch_size), float(lr), int(seed)
        self.out, self.resume = (Path(out) if out is not None else None), resume
        self.amp, self.progress, self.max_nonfinite, self.grad_clip = amp, progress, int(max_nonfinite), grad_clip
        self.checkpoint_every, self.log_every, self.drop_last = max(1, int(checkpoint_every)), log_every, drop_last
        self.find_unused_parameters, self.extra_config = find_unused_parameters, dict(extra_config or {})
        self.history: list[dict] = []
        self.interrupted = False
        self.epoch = self.step_in_epoch = self.global_step = self.nonfinite_streak = 0
        self.best_val = math.inf

    def settings(self) -> dict:
        """The trainer's settings as JSON-able values."""
        opt = self.optimizer_arg
        return {"max_epochs": self.max_epochs, "batch_size": self.batch_size, "lr": self.lr, "seed": self.seed,
                "amp": self.amp, "grad_clip": self.grad_clip, "max_nonfinite": self.max_nonfinite,
                "checkpoint_every": self.checkpoint_every, "drop_last": self.drop_last,
                "optimizer": "Adam" if opt is None else getattr(opt, "__name__", type(opt).__name__)}

    # ------------------------------------------------------------------ setup
    def _setup(self, d: D.Dist, device: torch.device) -> None:
        torch.manual_seed(self.seed + d.rank)  # also seeds every CUDA device
        self.model.to(device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = self.optimizer_arg
        if opt is None or isinstance(opt, type):
            self.opt = (opt or torch.optim.Adam)(params, lr=self.lr)
        else:
            self.opt = opt if isinstance(opt, torch.optim.Optimizer) else opt(params)
        use_amp = bool(self.amp) and device.type == "cuda"
        if self.amp and not use_amp:
            warnings.warn(f"amp=True is ignored on {device.type}: mixed precision runs on CUDA only", stacklevel=3)
        self.amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
        self.use_amp = use_amp
        self.scaler = torch.amp.GradScaler(device.type, enabled=use_amp and self.amp_dtype == torch.float16)
        self.net = self.model
        if d.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device] if device.type == "cuda" else None,
                find_unused_parameters=self.find_unused_parameters)
        self.partial = _Sums()
        self.partial_time = 0.0
        if self.resume is not None:
            self._restore(read_checkpoint(self.resume), d)
        self.log = RunLog(self.out) if self.out is not None and d.is_main else None
        if self.log:
            stale = remove_stale_temporaries(self.out)  # left by a process killed while writing a checkpoint
            if stale:
                self.log.note(f"removed {len(stale)} partial checkpoint file(s) of an interrupted write: "
                              f"{', '.join(p.name for p in stale)}")
            cfg = self.model.config() if hasattr(self.model, "config") else None
            self.log.write_config({**self.extra_config, "model": cfg, "trainer": self.settings(), "seed": self.seed,
                                   "world_size": d.world, "device": str(device), "versions": versions(),
                                   "threads": torch.get_num_threads()})
            if self.resume is not None:
                self.log.note(f"resumed from {self.resume} at epoch {self.epoch}, batch {self.step_in_epoch}")

    @property
    def model_device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _run_settings(self, d: D.Dist) -> dict:
        """The settings a checkpoint records: exact resume needs the same world size and (on CPU, where sums are
        split by thread) thread count."""
        return {**self.settings(), "world": d.world, "threads": torch.get_num_threads()}

    def _restore(self, state: dict, d: D.Dist) -> None:
        try:
            self.model.load_state_dict(state["model"])
        except (RuntimeError, KeyError) as e:
            detail = mismatch_report(state, self.model) or str(e)
            raise CheckpointError(f"{self.resume}: its weights do not fit this model; {detail}") from None
        if hasattr(self.model, "config"):
            differ = config_differences(model_config(state), self.model.config())
            if differ:
                warnings.warn(f"resuming from {self.resume} with a different model configuration: "
                              f"{'; '.join(differ)}", stacklevel=4)
        self.opt.load_state_dict(state["optimizer"])
        if "scaler" in state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state.get("step_in_epoch", 0))
        self.global_step, self.nonfinite_streak = int(state["global_step"]), int(state.get("nonfinite_streak", 0))
        self.best_val = float(state.get("best_val", math.inf))
        self.history = json.loads(state.get("history", "[]"))
        self.partial = _Sums(json.loads(state.get("epoch_sums", "{}")))
        self.partial_time = float(state.get("epoch_time", 0.0))
        saved = json.loads(state.get("trainer", "{}"))
        now = self._run_settings(d)
        keys = ("batch_size", "seed", "drop_last", "world") + (("threads",) if self.model_device.type == "cpu" else ())
        changed = [k for k in keys if k in saved and saved[k] != now[k]]
        if changed:
            warnings.warn(f"resuming with different {changed} than {self.resume}: the run will not reproduce an "
                          "uninterrupted one exactly", stacklevel=4)
        rng = state.get("rng", {})
        if len(rng.get("torch", [])) == d.world:
            torch.set_rng_state(rng["torch"][d.rank])
            cuda = rng.get("cuda", [[]] * d.world)[d.rank]
            if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda)
        else:
            warnings.warn(f"{self.resume} holds RNG states for {len(rng.get('torch', []))} process(es), not "
                          f"{d.world}; random draws will differ from an uninterrupted run", stacklevel=4)

    # ------------------------------------------------------------------ checkpoints
    def _save(self, names: list[str], d: D.Dist, sums: _Sums, epoch_time: float) -> Path | None:
        """Write the full training state to each of `names` in the run folder (a collective: call on all ranks)."""
        if self.out is None:
            return None
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
        rngs = D.gather_objects((torch.get_rng_state(), cuda), d)
        if not d.is_main:
            return None
        cfg = self.model.config() if hasattr(self.model, "config") else None
        state = {"config": json.dumps(cfg), "trainer": json.dumps(self._run_settings(d)),
                 "extra": json.dumps(self.extra_config), "history": json.dumps(self.history),
                 "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                 "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                 "step": self.global_step, "nonfinite_streak": self.nonfinite_streak, "best_val": self.best_val,
                 "epoch_sums": json.dumps(sums.state()), "epoch_time": epoch_time,
                 "rng": {"torch": [r[0] for r in rngs], "cuda": [list(r[1]) for r in rngs]}}
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        for name in names:
            save_checkpoint(self.out / name, state)
        return self.out / names[0]

    # ------------------------------------------------------------------ training
    def _batch_to(self, x: dict, avail: torch.Tensor, device: torch.device):
        return {k: v.to(device, non_blocking=True) for k, v in x.items()}, avail.to(device, non_blocking=True)

    def _step(self, x, avail, sums: _Sums, stop: D.StopRequest, d: D.Dist, device: torch.device) -> bool:
        """One optimiser step (skipped when the loss or gradients are not finite); whether to stop after it."""
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            out = self.net(x, avail)
        loss_value, terms = _scalars(out)
        bad, stopping = D.any_rank([not math.isfinite(loss_value), stop.requested is not None], d, device)
        ok = not bad
        if bad and math.isfinite(loss_value):
            self._warn("non-finite loss on another rank")
        elif bad:
            names = [k for k, v in terms.items() if not math.isfinite(v)] or ["none"]
            self._warn(f"non-finite loss ({loss_value}); non-finite terms: {', '.join(names)}")
        else:
            self.scaler.scale(out.loss).backward()
            self.scaler.unscale_(self.opt)
            grads = [p.grad for g in self.opt.param_groups for p in g["params"] if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
            if not torch.isfinite(norm).item() and not self.scaler.is_enabled():
                ok = False  # a float16 scaler handles (and skips) its own overflows
                self._warn(f"non-finite gradients (norm {norm.item()})")
            else:
                if self.grad_clip and torch.isfinite(norm):
                    torch.nn.utils.clip_grads_with_norm_([p for g in self.opt.param_groups for p in g["params"]],
                                                         self.grad_clip, norm)
                self.scaler.step(self.opt)
                self.scaler.update()
                sums.add(loss_value, terms, next(iter(x.values())).shape[0])
        self.nonfinite_streak = 0 if ok else self.nonfinite_streak + 1
        self.step_in_epoch += 1
        self.global_step += 1
        if self.nonfinite_streak >= self.max_nonfinite:
            self.opt.zero_grad(set_to_none=True)
            last = self.out / LAST if self.out is not None and (self.out / LAST).exists() else None
            where = f"the last good checkpoint {last} is intact" if last else "no checkpoint was written"
            raise NonFiniteLossError(
                f"{self.nonfinite_streak} consecutive steps had a non-finite loss or gradients (epoch "
                f"{self.epoch + 1}, batch {self.step_in_epoch}); stopped training. {where}; try a lower lr or "
                f"grad_clip, and check the data for NaN/inf")
        return stopping

    def _warn(self, what: str) -> None:
        msg = (f"step {self.global_step + 1} (epoch {self.epoch + 1}, batch {self.step_in_epoch + 1}): {what}; "
               f"skipped without updating the weights ({self.nonfinite_streak + 1} consecutive)")
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        if getattr(self, "log", None):
            self.log.note(msg)

    @torch.no_grad()
    def evaluate(self, data, prefix: str = "val/", d: D.Dist | None = None) -> dict[str, float]:
        """Mean loss and terms over `data` (weighted by batch size), in eval mode, under a fixed seed."""
        d = d or D.Dist()
        device = self.model_device
        was_training = self.model.training
        self.model.eval()
        sums = _Sums()
        accel = device.type != "cpu"
        fork = {"devices": [device], "device_type": device.type} if accel else {"devices": []}  # CPU: its RNG only
        with torch.random.fork_rng(**fork):
            torch.manual_seed(self.seed + d.rank)
            for x, avail, _ in data.batches(self.batch_size, shuffle=False, rank=d.rank, world=d.world):
                x, avail = self._batch_to(x, avail, device)
                with torch.autocast(device.type, dtype=getattr(self, "amp_dtype", torch.float16),
                                    enabled=getattr(self, "use_amp", False)):
                    loss, terms = _scalars(self.model(x, avail))
                sums.add(loss, terms, next(iter(x.values())).shape[0])
        self.model.train(was_training)
        return sums.means(prefix, d, device)

    def fit(self, train, val=None) -> list[dict]:
        """Train until `max_epochs` (counting epochs of a resumed run); the history of per-epoch dicts."""
        d, device = D.setup(self.device_arg)
        try:
            with D.StopRequest() as stop:
                self._setup(d, device)
                return self._fit(train, val, d, device, stop)
        finally:
            D.teardown(d)

    def _fit(self, train, val, d: D.Dist, device: torch.device, stop: D.StopRequest) -> list[dict]:
        self.interrupted = False
        show = self.progress and d.is_main
        saved_at = self.epoch if self.resume is not None else -1
        while self.epoch < self.max_epochs:
            sums, t0 = self.partial, time.time() - self.partial_time
            self.partial, self.partial_time = _Sums(), 0.0
            total = train.num_batches(self.batch_size, world=d.world, drop_last=self.drop_last) \
                if hasattr(train, "num_batches") else None
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            bar = tqdm(total=total, initial=self.step_in_epoch, disable=None if show else True, leave=False,
                       desc=f"epoch {self.epoch + 1}/{self.max_epochs}", file=sys.stderr)
            self.model.train()
            for x, avail, _ in train.batches(self.batch_size, shuffle=True, generator=gen, start=self.step_in_epoch,
                                             rank=d.rank, world=d.world, drop_last=self.drop_last):
                stopping = self._step(*self._batch_to(x, avail, device), sums, stop, d, device)
                bar.update(1)
                if self.step_in_epoch % max(1, self.log_every) == 0 and sums.n:
                    bar.set_postfix(loss=f"{sums.loss / sums.n:.4g}")
                if stopping:
                    bar.close()
                    return self._interrupted(stop, d, sums, time.time() - t0)
            bar.close()
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
            entry = {"epoch": self.epoch, **sums.means("train/", d, device)}
            if val is not None:
                entry.update(self.evaluate(val, "val/", d))
            entry["time"] = time.time() - t0
            self.history.append(entry)
            names = [LAST] if self.epoch % self.checkpoint_every == 0 or self.epoch == self.max_epochs else []
            if val is not None and entry["val/loss"] < self.best_val:
                self.best_val = entry["val/loss"]
                names.append(BEST)
            if self.log:
                self.log.write_history(self.history)
            if names:
                self._save(names, d, _Sums(), 0.0)
                saved_at = self.epoch if LAST in names else saved_at
            if show:
                tqdm.write("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                     for k, v in entry.items()), file=sys.stderr)
            if D.any_rank([stop.requested is not None], d, device)[0]:
                return self._interrupted(stop, d, _Sums(), 0.0, saved=saved_at == self.epoch)
        if saved_at != self.epoch:
            self._save([LAST], d, _Sums(), 0.0)
        return self.history

    def _interrupted(self, stop: D.StopRequest, d: D.Dist, sums: _Sums, elapsed: float, saved=False) -> list:
        """Checkpoint the state after the last finished step and say how to resume."""
        self.interrupted = True
        path = self._save([LAST], d, sums, elapsed) if not saved else self.out / LAST if self.out else None
        if d.is_main:
            signame = stop.requested or "a signal on another rank"
            if path is None:
                msg = f"mmvae: interrupted by {signame}; no run folder (out=None), so nothing was saved"
            else:
                msg = (f"mmvae: interrupted by {signame}; saved checkpoint {path} (epoch {self.epoch + 1}, "
                       f"{self.step_in_epoch} batches done). Resume with `mmvae train ... --resume {self.out}` "
                       f"or Trainer(..., resume={str(path)!r})")
            print(msg, file=sys.stderr, flush=True)
            if self.log:
                self.log.note(msg)
        return self.history
