"""Training the shortcut from a trajectory store.

    result = train(recipe, store_url, out_dir, TrainConfig(max_steps=2000))

Loss: MSE between predicted and recorded h_{t+1} over the positions still masked after step t
(what the next step's logits are read from), plus an optional KL between the base head's
softmax of the true and the predicted features at temperature T. `step_balance` (alpha) divides
each pair's MSE by (the cache's MSE on it)^alpha, so late steps, whose features move ~30x less,
are not drowned out by early ones. `unroll` (k) chains k shortcut calls from the recorded h_t,
each from the previous prediction as at generation time, and averages the k losses. AdamW, linear warm-up then
cosine decay to `min_lr_ratio`, gradient clipping, an EMA of the weights (the EMA is what is
exported). Validation compares against copying h_t forward (the cache): `val_mse_identity`.

`online` trains on the shortcut's own rollouts instead (`migmcut.online`): batches of the recipe's
training conditions sampled with the shortcut at `online_budgets` full steps (each budget's
searched schedule where `init` has one, else uniform), one update per shortcut step with the
base's features at the reached state as targets; the store, when given, supplies validation
only. `online_mse` / `online_mse_identity` are the last `val_every` updates' on-policy errors.
`init` starts from a trained checkpoint (its architecture, not the recipe's).

Under torchrun (WORLD_SIZE > 1) the shortcut is wrapped in DDP: every rank reads its own
trajectories of the same train split, rank 0 alone logs, validates and writes checkpoints.
Checkpoint directory: `shortcut.safetensors` (EMA weights) + `config.json` (architecture, base
fingerprint, training summary) + `trainer.pt` (weights-only torch state for `--resume`), each
written to a temporary file and renamed into place.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from migmcut import distributed
from migmcut.base import load_base
from migmcut.devices import placement
from migmcut.online import OnlineBatches
from migmcut.store.reader import PairDataset, TrajectoryStore, pair_loader
from migmcut.errors import (
    BATCH_MAX, COUNT_MAX, SEED_MAX, CheckpointError, Interrupted, StoreError, UserError, api, arg, check_range,
)
from migmcut.recipe import TrainConfig, as_recipe
from migmcut.files import atomic_write, dir_lock, is_disk_full, writable_dir
from migmcut.shortcut import (
    SequenceInputs, Shortcut, ShortcutConfig, ShortcutInputs, load_shortcut, load_weights, resolve_checkpoint, save_shortcut,
)


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.max_steps - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class Rollout(torch.nn.Module):
    """The shortcut chained over consecutive steps, each from the previous prediction (one module, for DDP)."""

    def __init__(self, net: Shortcut):
        super().__init__()
        self.net = net

    def forward(self, steps: list[dict]) -> list[torch.Tensor]:
        preds, h = [], steps[0]["h"]
        for x in steps:
            h = self.net(**{**x, "h": h})
            preds.append(h)
        return preds


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    per_pos = (pred - target).pow(2).mean(-1)
    return (per_pos * mask).sum() / mask.sum().clamp_min(1)


def balanced_mse(pred, target, h, mask, alpha: float) -> torch.Tensor:
    """Mean over pairs of MSE / (the cache's MSE)^alpha; 1 weighs every step's relative error alike.
    alpha 0 is `masked_mse` (pooled over positions, as without balancing)."""
    if alpha == 0:
        return masked_mse(pred, target, mask)
    count = mask.sum(1).clamp_min(1)
    err = ((pred - target).pow(2).mean(-1) * mask).sum(1) / count
    base = ((h - target).pow(2).mean(-1) * mask).sum(1) / count
    keep = mask.any(1)
    return (err / base.clamp_min(1e-8).pow(alpha))[keep].mean()


def head_kl(base, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, temperature: float):
    """KL(softmax(head(target)/T) || softmax(head(pred)/T)) over masked positions, and top-1 agreement."""
    dtype = next(base.parameters()).dtype  # fp32 logits from a head in the base's dtype
    lp = F.log_softmax(base.head(pred.to(dtype))[mask].float() / temperature, -1)  # the head may be position-dependent
    lt = F.log_softmax(base.head(target.to(dtype))[mask].float() / temperature, -1)
    kl = (lt.exp() * (lt - lp)).sum(-1).mean()
    agree = (lp.argmax(-1) == lt.argmax(-1)).float().mean()
    return kl, agree


@torch.no_grad()
def evaluate(model, base, loader, inputs: ShortcutInputs | SequenceInputs, max_pairs: int,
             temperature: float = 1.0) -> dict:
    """Held-out figures of the shortcut and of copying h_t forward (the cache)."""
    sums: dict[str, float] = {}
    seen = 0
    for batch in loader:
        x = inputs(batch)
        target = batch["h_next"].to(inputs.device)
        mask = batch["loss_mask"].to(inputs.device)
        pred = model(**x)
        pred, h = inputs.image(pred), inputs.image(x["h"])
        for name, p in (("", pred), ("_identity", h)):
            cos = F.cosine_similarity(p, target, dim=-1)
            kl, agree = head_kl(base, p, target, mask, temperature)
            n = len(p)
            sums[f"val_mse{name}"] = sums.get(f"val_mse{name}", 0.0) + masked_mse(p, target, mask).item() * n
            sums[f"val_cos{name}"] = sums.get(f"val_cos{name}", 0.0) + ((cos * mask).sum() / mask.sum()).item() * n
            sums[f"val_kl{name}"] = sums.get(f"val_kl{name}", 0.0) + kl.item() * n
            sums[f"val_top1{name}"] = sums.get(f"val_top1{name}", 0.0) + agree.item() * n
        seen += len(pred)
        if seen >= max_pairs:
            break
    if not seen:
        raise StoreError("the validation split has no pairs: record more trajectories or raise train.val_fraction")
    return {k: v / seen for k, v in sums.items()}


def save_checkpoint(out: Path, model: Shortcut, ema: Shortcut, opt, step: int, meta: dict) -> None:
    """The trainer state (`trainer.pt`, for resuming), then the EMA weights as a shortcut checkpoint
    (`Shortcut.save`, the one checkpoint writer)."""
    out.mkdir(parents=True, exist_ok=True)
    state = {
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "opt": opt.state_dict(),
        "step": step,
        "torch_rng": torch.get_rng_state(),
    }
    atomic_write(out / "trainer.pt", lambda p: torch.save(state, p))
    save_shortcut(ema, out, {**meta, "step": step})


def trainer_state_path(out: Path) -> Path:
    """`out`'s trainer state (what `resume` continues), or a CheckpointError when there is none."""
    path = out / "trainer.pt"
    if not path.is_file():
        raise CheckpointError(f"{arg('resume', True)}: {out} holds no trainer state (trainer.pt); start without {arg('resume')}")
    return path


def load_trainer_state(out: Path) -> dict:
    path = trainer_state_path(out)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user-facing problem
        raise CheckpointError(f"{arg('resume', True)}: {path} is unreadable ({type(err).__name__}); start without {arg('resume')}") from None


@dataclass
class TrainResult:
    out: str  # the checkpoint directory (load it with `load_shortcut`)
    steps: int  # the step the checkpoint is at
    start_step: int  # where this run started (0, or the resumed step)
    validation: dict = field(default_factory=dict)  # val_mse, val_mse_identity, val_cos, val_top1, val_kl ...
    pairs_per_s: float = 0.0
    seconds: float = 0.0
    sampler_warning: str | None = None  # the store was recorded by another sampler than the recipe's
    trajectories: int | None = None  # complete trajectories of the store used (train + validation)
    store_trajectories: int | None = None  # trajectories the store holds (more when allow_incomplete let it be)

    def to_json(self) -> dict:
        used = ({"trajectories": self.trajectories, "store_trajectories": self.store_trajectories}
                if self.trajectories is not None else {})
        return {"steps": self.steps, "start_step": self.start_step, **self.validation, "pairs_per_s": self.pairs_per_s,
                "seconds": self.seconds, **used,
                **({"sampler_warning": self.sampler_warning} if self.sampler_warning else {})}


@api
def train(
    recipe,
    store: str | None,
    out: str | Path,
    cfg: TrainConfig | None = None,
    *,
    max_steps: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    workers: int | None = None,
    seed: int | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "auto",
    resume: bool = False,
    overwrite: bool = False,
    init: str | Path | None = None,
    online: bool | None = None,
    allow_incomplete: bool = False,
    base=None,
    log=None,
) -> TrainResult:
    """Train a shortcut for `recipe`'s base from the store at `store` into checkpoint directory `out`.

    `cfg`: the training settings (default: the recipe's `train` section); `max_steps`, `batch_size`,
    `lr`, `workers` (DataLoader processes) and `seed` override it. `dtype` is the frozen base's
    (its embeddings and head; "auto": bf16 on a GPU); the shortcut trains in fp32. A non-empty `out`
    (hidden files aside: write probes, temporary files) is refused unless `resume` or `overwrite`;
    one process (rank 0) at a time holds `out`'s lock. `init`: a shortcut checkpoint to start from
    (`builtin:NAME` or a directory); `online`: train on the shortcut's own rollouts (the store,
    optional then, is used for validation only). A store with incomplete trajectories (still being
    recorded, or interrupted) is refused unless `allow_incomplete`; the result counts the trajectories
    used. Nothing is created before the input is validated. A full disk is a `CheckpointError`: the
    last checkpoint written is intact. SIGINT / SIGTERM stop after the step in flight, save a resumable
    checkpoint there and raise `Interrupted` (a KeyboardInterrupt). `log(step, stats)` is called after
    every step (rank 0).
    """

    for name, value, low, high in (("max_steps", max_steps, 1, COUNT_MAX), ("batch_size", batch_size, 1, BATCH_MAX),
                                   ("workers", workers, 0, 256), ("seed", seed, 0, SEED_MAX)):
        check_range(name, value, low, high)
    check_range("lr", lr, 0, 10, low_open=True, integer=False)
    recipe = as_recipe(recipe)
    overrides = dict(max_steps=max_steps, batch_size=batch_size, lr=lr, num_workers=workers, seed=seed, online=online)
    cfg = dataclasses.replace(cfg or recipe.train, **{k: v for k, v in overrides.items() if v is not None})
    cfg.validate()
    if store is None and not cfg.online:
        raise UserError(f"training needs a trajectory store ({arg('store')}), or {arg('online', True)} rollouts")
    if init is not None:

        init = resolve_checkpoint(str(init), "init")
        if init is None or not (init.is_file() or (init / "shortcut.safetensors").is_file()):
            raise CheckpointError(f"{arg('init', init)} is not a shortcut checkpoint (no shortcut.safetensors, "
                                  "nor a released .pth file)")
    if cfg.online and any(b >= recipe.sampler.steps for b in cfg.online_budgets):
        raise UserError(f"train.online_budgets must be below the sampler's {recipe.sampler.steps} steps "
                        f"(a rollout needs shortcut steps), got {cfg.online_budgets}")
    device, dtype = placement(device, dtype, base)
    out = Path(out).expanduser()
    _check_out(out, resume, overwrite)  # creates nothing: `_hold_out` does, once the input is validated
    hold = (lambda: _hold_out(out, resume, overwrite)) if distributed.env_rank() == 0 else nullcontext
    with torch.enable_grad():  # callers (bench, notebooks) may have switched autograd off
        try:
            return _train(recipe, store, out, cfg, device=device, dtype=dtype, resume=resume, init=init, base=base,
                          log=log, allow_incomplete=allow_incomplete, hold=hold)
        except OSError as err:
            if not is_disk_full(err):
                raise
            again = f"with {arg('resume', True)}" if (out / "trainer.pt").is_file() else "again"
            raise CheckpointError(f"{out}: no space left on the device ({err.strerror}); the last checkpoint is "
                                  f"intact: free some space and run the same command {again}") from None


def _not_empty(out: Path) -> CheckpointError:
    return CheckpointError(f"{arg('out', out)} is not empty (an earlier checkpoint?): pass {arg('resume', True)} to "
                           f"continue it, {arg('overwrite', True)} to replace it, or choose another {arg('out')}")


def _has_checkpoint(out: Path) -> bool:
    """`out` holds files (hidden ones aside: write probes, temporary files)."""
    return out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir())


def _check_out(out: Path, resume: bool, overwrite: bool) -> None:
    """What can be known about checkpoint directory `out` without touching it."""
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{arg('out', out)}: exists and is not a directory; choose another {arg('out')}")
    if resume:
        trainer_state_path(out)
    elif not overwrite and _has_checkpoint(out):
        raise _not_empty(out)
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise CheckpointError(f"{arg('out', out)}: cannot write there ({parent} is not a writable directory); "
                              "choose another location")


@contextmanager
def _hold_out(out: Path, resume: bool, overwrite: bool):
    """Rank 0 holds `out` (created if missing, removed again if it stays empty) while training writes it."""
    busy = f"{arg('out', out)} is being trained into by another migmcut process; wait for it or choose another {arg('out')}"
    with dir_lock(out, busy, error=CheckpointError):
        writable_dir(out)
        if not resume and not overwrite and _has_checkpoint(out):  # written since `_check_out` looked
            raise _not_empty(out)
        yield


def _train(recipe, store_url, out, cfg, *, device, dtype, resume, init, base, log, allow_incomplete,
           hold) -> TrainResult:
    dist = distributed.init()
    try:
        return _train_ranks(dist, recipe, store_url, out, cfg, device=dist.device(device), dtype=dtype, resume=resume,
                            init=init, base=base, log=log, allow_incomplete=allow_incomplete, hold=hold)
    finally:
        dist.close()


def _train_ranks(dist, recipe, store_url, out, cfg, *, device, dtype, resume, init, base, log, allow_incomplete,
                 hold) -> TrainResult:

    base = base if base is not None else load_base(recipe.base, device, dtype)
    store = _open_store(store_url, base, recipe.name, allow_incomplete) if store_url is not None else None
    differs = None if store is None else store.sampler_difference(recipe.sampler)
    warning = f"{store_url} was recorded by another sampler than recipe {recipe.name}'s: {differs}" if differs else None
    rank, world = dist.rank, dist.world
    torch.manual_seed(dist.seed(cfg.seed))
    if init is not None:  # its own architecture, whatever the recipe's

        model = load_shortcut(init, base)[0].requires_grad_(True).train().to(device)
    else:
        model = Shortcut(ShortcutConfig.from_recipe(recipe.shortcut, base.feature_dim, base.condition_dim)).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )
    step, summary = 0, {}
    if resume:
        state = load_trainer_state(out)
        meta = json.loads((out / "config.json").read_text()) if (out / "config.json").is_file() else {}
        summary = {k: v for k, v in meta.get("summary", {}).items() if k != "steps"}  # if nothing is left to do
        if meta.get("base_fingerprint") not in (None, base.fingerprint):
            raise CheckpointError(f"{arg('resume', True)}: {out} belongs to base {meta['base_fingerprint']}, not {base.fingerprint}")
        what = f"{arg('resume', True)}: {out} does not match this shortcut architecture"
        try:
            load_weights(model, state["model"], what)
            load_weights(ema, state["ema"], what)
            opt.load_state_dict(state["opt"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(f"{what} ({type(err).__name__})") from None
        step = int(state["step"])
        torch.set_rng_state(state["torch_rng"])
    rollout = Rollout(model)
    ddp = torch.nn.parallel.DistributedDataParallel(rollout) if world > 1 else rollout
    sequence = getattr(model, "reads_sequence", False)  # a released network: the base recomputes its input rows
    if sequence and cfg.online:
        raise UserError(f"{arg('online', True)} rolls out migmcut's own shortcut; fine-tune a released one "
                        f"({arg('init', init)}) on a store")
    inputs = SequenceInputs(base, model, device) if sequence else ShortcutInputs(base, device)
    val_data = None
    meta = {"base_fingerprint": base.fingerprint, "recipe": recipe.name, "store": None if store is None else str(store_url),
            "train": dataclasses.asdict(cfg), **({"init": str(init)} if init is not None else {})}
    if store is not None:

        train_idx, val_idx = store.split(cfg.val_fraction, seed=cfg.seed)
        if len(val_idx) == 0 or (len(train_idx) == 0 and not cfg.online):
            raise StoreError(f"{store_url}: too few trajectories for a train/val split at val_fraction {cfg.val_fraction}")
        val_data = PairDataset(store, val_idx, seed=cfg.seed, shuffle=True, buffer=cfg.buffer, rank=0, world=1)
        meta.update(train_trajectories=int(len(train_idx)), val_trajectories=int(len(val_idx)),
                    store_trajectories=int(store.num))
    if warning:
        meta["sampler_warning"] = warning
    online = None
    if cfg.online:

        online = OnlineBatches(base, model, recipe, cfg, init, rank=rank, world=world, start=step)
        meta["online_schedules"] = online.schedules
        batches = iter(online)
    else:
        if cfg.unroll >= store.steps:
            raise UserError(f"train.unroll must be below the store's step count ({store.steps}), got {cfg.unroll}")
        data = PairDataset(store, train_idx, seed=cfg.seed + step, epochs=None, buffer=cfg.buffer, rank=rank,
                           world=world, window=cfg.unroll)
        batches = store_batches(pair_loader(data, cfg.batch_size, cfg.num_workers), inputs, device)
    t0, pairs_seen, start_step = time.perf_counter(), 0, step

    def checkpoint() -> None:
        meta["summary"] = {**summary, "steps": step}
        save_checkpoint(out, model, ema, opt, step, meta)
        if online is not None:
            online.save_schedules(out)

    with hold(), StopSignals() as stop:
        while step < cfg.max_steps:
            try:
                xs, targets, masks = next(batches)
            except Exception:
                if stop.signum is None:
                    raise
                break  # a DataLoader worker stopped by the same signal: save the steps done
            loss = 0.0
            for x, target, mask, pred in zip(xs, targets, masks, ddp(xs)):
                pred = inputs.image(pred)
                loss = loss + balanced_mse(pred, target, inputs.image(x["h"]), mask, cfg.step_balance) / len(xs)
                if cfg.kl_weight > 0:
                    kl, _ = head_kl(base, pred, target, mask, cfg.kl_temperature)
                    loss = loss + cfg.kl_weight * kl / len(xs)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            with torch.no_grad():
                d = min(cfg.ema, (1 + step) / (10 + step))
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(pm, 1 - d)
                if online is not None:
                    online.observe(masked_mse(pred, target, mask).item(),
                                   masked_mse(inputs.image(x["h"]), target, mask).item())
            step += 1
            pairs_seen += len(xs[0]["h"]) * len(xs) * world
            if log is not None and rank == 0:
                log(step, {"loss": loss.item(), "pairs_per_s": pairs_seen / (time.perf_counter() - t0),
                           "max_steps": cfg.max_steps})
            last = step == cfg.max_steps
            if rank == 0 and (step % cfg.val_every == 0 or last):
                summary = online.figures() if online is not None else {}
                if val_data is not None:
                    summary.update(evaluate(ema, base, pair_loader(val_data, cfg.batch_size, 0), inputs,
                                            cfg.val_pairs, cfg.kl_temperature))
            if rank == 0 and (step % cfg.checkpoint_every == 0 or last):
                checkpoint()
            if dist.any(stop.signum is not None) and not last:  # every rank stops at the same step
                break
        if step < cfg.max_steps:  # stopped by a signal
            if rank == 0 and (step % cfg.checkpoint_every or step == start_step):
                checkpoint()
            dist.barrier()
            raise Interrupted(f"interrupted by {signal.Signals(stop.signum or signal.SIGINT).name} at step {step} of "
                              f"{cfg.max_steps}: a resumable checkpoint is saved in {out}; run the same command with "
                              f"{arg('resume', True)} to continue", stop.signum or signal.SIGINT)
    dist.barrier()
    seconds = time.perf_counter() - t0
    return TrainResult(str(out), step, start_step, {k: round(v, 6) for k, v in summary.items()},
                       round(pairs_seen / seconds, 1) if step > start_step else 0.0, round(seconds, 3), warning,
                       meta.get("train_trajectories", 0) + meta.get("val_trajectories", 0) if store is not None else None,
                       store.num if store is not None else None)


class StopSignals:
    """While the block runs (main thread only), SIGINT and SIGTERM set `signum` instead of stopping the
    process, so a job can finish its step and keep its work; a second signal stops it at once
    (KeyboardInterrupt). The previous handlers come back on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self.previous: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._received)
        return self

    def _received(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _open_store(store_url, base, recipe_name: str, allow_incomplete: bool = False):

    store = TrajectoryStore(store_url)
    complete = store.complete_indices()
    if len(complete) == 0:
        raise StoreError(f"{store_url} has no complete trajectories: run migmcut record first")
    if len(complete) < store.num and not allow_incomplete:
        raise StoreError(f"{store_url}: only {len(complete)} of its {store.num} trajectories are complete (still being "
                         "recorded, or interrupted): finish it with the same `migmcut record` command, or pass "
                         f"{arg('allow_incomplete', True)} to train on the {len(complete)}")
    if len(complete) < 2:
        raise StoreError(f"{store_url} has {len(complete)} complete trajectory; training needs at least 2 (train + val)")
    store.check_base(base, recipe_name)
    return store


def store_batches(loader, inputs: ShortcutInputs | SequenceInputs, device):
    """(shortcut inputs, targets, loss masks) of each batch of store pairs: lists of one, or of `unroll`."""
    for batch in loader:
        window = batch if isinstance(batch, list) else [batch]
        yield ([inputs(b) for b in window], [b["h_next"].to(device) for b in window],
               [b["loss_mask"].to(device) for b in window])
