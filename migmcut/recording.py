"""The record job: teacher rollouts of the base model written into a trajectory store.

    result = record(load_recipe("tiny-shapes"), "runs/store", num=1000, codec="bf16")

Trajectory i has seed `trajectory_seed(seed, i)` and a condition drawn from a generator keyed
by (seed, i) alone, so what gets recorded does not depend on batch size, process count or
interruptions. Work is split into blocks of `block_size` consecutive trajectories (see
`migmcut.store.writer`); under `torchrun` rank 0 creates (or checks) the store, then every rank
records its share of the blocks still to do, each into its own chunk and shard files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from migmcut.base import load_base
from migmcut.base.condition_sources import ConditionSource
from migmcut.base.registry import resolve
from migmcut.devices import placement
from migmcut.distributed import Dist, init
from migmcut.errors import BATCH_MAX, COUNT_MAX, SEED_MAX, StoreError, UserError, api, arg, check_range
from migmcut.files import is_disk_full
from migmcut.recipe import Recipe, as_recipe
from migmcut.runner import resolve_run
from migmcut.sampler import StepEvent, trajectory_seed
from migmcut.store import location
from migmcut.store.codecs import CODECS, DeltaEncoder, check_tolerance, encode, get_codec
from migmcut.store.schema import DEFAULT_BLOCK_SIZE, StoreSpec
from migmcut.store.writer import BlockWriter, check_target, prepare_store


# -- conditions --------------------------------------------------------------------------------
def condition_source(recipe: Recipe) -> ConditionSource:
    """How trajectories' conditions are drawn: the base adapter's `condition_source`."""
    source = resolve(recipe.base.kind).condition_source
    if source is None:
        raise UserError(f"recording is not supported for base kind {recipe.base.kind!r} yet (no condition source)")
    return source


def conditions_for(recipe: Recipe, run_seed: int, indices) -> list:
    """The conditions of trajectories `indices` of a run: a function of (run seed, index) only."""
    return condition_source(recipe).draw(recipe, run_seed, list(indices))


# -- the job -----------------------------------------------------------------------------------
@dataclass
class RecordResult:
    store: str
    trajectories: int
    written: int
    seconds: float
    bytes: int
    action: str = "resume"  # create | overwrite | resume | grow (more trajectories appended to a store)

    def to_json(self) -> dict:
        return {"store": self.store, "trajectories": self.trajectories, "written": self.written,
                "seconds": round(self.seconds, 4), "bytes": self.bytes}


class RankError(UserError):
    """A user error found by rank 0 and re-raised on the other ranks (which stay quiet about it)."""


def _validate(num: int, steps: int | None, codec: str, batch_size: int | None, block_size: int,
              tolerance: float | None = None, seed: int = 0) -> None:
    """Every argument of a record job, checked before anything is loaded or created."""
    for name, value, low, high in (("num", num, 1, COUNT_MAX), ("batch_size", batch_size, 1, BATCH_MAX),
                                   ("steps", steps, 1, COUNT_MAX), ("block_size", block_size, 1, BATCH_MAX),
                                   ("seed", seed, 0, SEED_MAX)):
        check_range(name, value, low, high)
    if codec not in CODECS:
        raise UserError(f"{arg('codec', repr(codec))}: choose one of {', '.join(CODECS)}")
    if tolerance is not None:
        if codec != "delta":
            raise UserError(f"{arg('tolerance')} is for {arg('codec', 'delta')} (this run: {arg('codec', codec)})")
        check_tolerance(tolerance)


def build_spec(recipe: Recipe, base, *, num: int, steps: int | None, codec: str, seed: int,
               dtype: torch.dtype = torch.float32, block_size: int = DEFAULT_BLOCK_SIZE,
               chunk_steps: int = 0, tolerance: float | None = None) -> StoreSpec:
    """The store a run would write (validated: steps within the image size, a known codec ...)."""
    config = dataclasses.replace(recipe.sampler, steps=steps if steps is not None else recipe.sampler.steps)
    if config.steps > base.num_tokens:
        raise UserError(f"{arg('steps', config.steps)} exceeds the number of image tokens ({base.num_tokens})")
    try:
        config.check(base.num_tokens)
    except ValueError as err:
        raise UserError(f"sampler: {err}") from None
    source = condition_source(recipe)
    resolved = recipe.to_dict()
    resolved["sampler"] = dataclasses.asdict(config)
    return StoreSpec(
        num=num, steps=config.steps, branches=config.branches, num_tokens=base.num_tokens,
        feature_dim=base.feature_dim, codec=codec, seed=int(seed), fingerprint=base.fingerprint,
        recipe=resolved, condition=source.kind, condition_source=source.name,
        codebook_size=base.codebook_size, compute_dtype=str(dtype).removeprefix("torch."),
        block_size=block_size, chunk_steps=chunk_steps, tolerance=tolerance,
    )


def dry_run(recipe: Recipe | str, out: str, *, num: int = 1000, steps: int | None = None, codec: str = "bf16",
            seed: int = 0, overwrite: bool = False, device: str | torch.device | None = None,
            dtype: str | torch.dtype = "auto", block_size: int = DEFAULT_BLOCK_SIZE, base=None,
            tolerance: float | None = None, batch_size: int | None = None) -> dict:
    """What `record` would write: arrays, shapes, estimated bytes. Loads (never runs) the base.
    Takes `record`'s arguments (`batch_size` is checked; it does not change the store)."""
    _validate(num, steps, codec, batch_size, block_size, tolerance, seed)
    recipe = as_recipe(recipe)
    device, dtype = placement(device, dtype, base)
    base = base if base is not None else load_base(recipe.base, device, dtype)
    spec = build_spec(recipe, base, num=num, steps=steps, codec=codec, seed=seed, dtype=dtype, block_size=block_size,
                      tolerance=tolerance)
    loc = location.resolve(out)
    action = check_target(loc, spec, overwrite)
    est = spec.estimate_bytes()
    arrays = []
    for a in spec.arrays():
        raw = int(np.prod(a.shape)) * (np.dtype(a.dtype).itemsize if a.dtype != "string" else 48)
        arrays.append(dict(a.describe(), raw_bytes=raw))
    return {
        "store": str(loc), "dry_run": True, "action": action, "trajectories": num, "codec": codec,
        "steps": spec.steps, "branches": spec.branches, "num_tokens": spec.num_tokens,
        "feature_dim": spec.feature_dim, "block_size": spec.block_size, "chunk_steps": spec.chunk_steps,
        "arrays": arrays, "bytes_raw": est["raw_total"], "bytes_estimated": est["estimated_total"],
        "bytes_per_trajectory_estimated": est["estimated_per_trajectory"],
        "fp32_bytes_per_trajectory": est["fp32_per_trajectory"], "tolerance": spec.tolerance,
        "feature_bytes_per_trajectory_estimated": {c: spec.estimated_feature_bytes(c) for c in CODECS},
    }


class _FeatureRecorder:
    """Sampler observer: encodes each step's features into a (B, branches, steps, L, D) buffer."""

    def __init__(self, batch: int, spec: StoreSpec):
        c = get_codec(spec.codec)
        shape = (batch, spec.branches, spec.steps, spec.num_tokens, spec.feature_dim)
        self.codec = c.name
        self.values = np.empty(shape, dtype=c.dtype)
        self.delta = DeltaEncoder(spec.tolerance) if c.name == "delta" else None  # steps arrive in order
        self.scale = np.empty(shape[:-1] if c.name == "int8" else shape[:2], dtype=np.float32) if c.has_scale else None

    def __call__(self, event: StepEvent) -> None:
        if self.delta is not None:
            self.values[:, :, event.t] = self.delta.step(event.features)
            if event.t == 0:
                self.scale[:] = self.delta.steps()
            return
        values, scale = encode(event.features, self.codec)
        self.values[:, :, event.t] = values
        if self.scale is not None:
            self.scale[:, :, event.t] = scale


@api
def record(
    recipe: Recipe | str,
    out: str,
    *,
    num: int = 1000,
    batch_size: int | None = None,
    steps: int | None = None,
    codec: str = "bf16",
    seed: int = 0,
    overwrite: bool = False,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "auto",
    block_size: int = DEFAULT_BLOCK_SIZE,
    chunk_steps: int = 0,
    tolerance: float | None = None,
    base=None,
    on_start: Callable[[int, Dist], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> RecordResult:
    """Record `num` trajectories into the store at `out` (a path or fsspec URL), resuming if possible.

    A store recorded with the same settings but fewer trajectories grows: trajectories n..num-1 are
    appended, the same store as recording `num` at once (other settings are refused unless `overwrite`).
    `on_start(k, dist)` is told how many trajectories this process will record, `on_progress(n)`
    after each batch. Under torchrun every rank calls this; the result is the same on all ranks.
    """
    _validate(num, steps, codec, batch_size, block_size, tolerance, seed)
    recipe = as_recipe(recipe)
    device, dtype = placement(device, dtype, base)
    dist = init("gloo")  # only small objects travel: gloo is enough on any device
    lock = contextlib.ExitStack()  # rank 0 holds the store's writer lock for the whole job
    try:
        device = dist.device(device)
        base = base if base is not None else load_base(recipe.base, device, dtype)
        base = base.to(device=device, dtype=dtype)
        spec = build_spec(recipe, base, num=num, steps=steps, codec=codec, seed=seed, dtype=dtype,
                          block_size=block_size, chunk_steps=chunk_steps, tolerance=tolerance)
        loc = location.resolve(out)
        status = None
        if dist.rank == 0:
            try:
                lock.enter_context(location.writer_lock(loc))
                todo, action, spec, kept = prepare_store(loc, spec, overwrite)
                status = ("ok", todo, action, spec, kept)
            except UserError as err:
                status = ("user", err.args[0])  # the message with its parameters, for the caller to render
            except Exception as err:  # noqa: BLE001 - other ranks must not wait forever
                status = ("internal", f"{type(err).__name__}: {err}")
                if dist.world == 1:
                    raise
        status = dist.broadcast(status)
        if status[0] != "ok":
            if status[0] == "user":
                raise (StoreError if dist.rank == 0 else RankError)(status[1])
            raise RuntimeError(f"rank 0 could not prepare the store: {status[1]}")
        _, todo, action, spec, kept = status
        start = time.perf_counter()
        written = _record_blocks(
            base, recipe, spec, loc, todo[dist.rank :: dist.world], batch_size or recipe.generate.batch_size,
            clear=action in ("resume", "grow"), on_start=(lambda k: on_start(k, dist)) if on_start else None,
            on_progress=on_progress, kept=kept,
        )
        total = sum(dist.gather(written))
        seconds = max(dist.gather(time.perf_counter() - start))
        size = location.size_bytes(loc) if dist.rank == 0 else 0
        size = dist.broadcast(size)
        return RecordResult(str(loc), spec.num, total, seconds, size, action)
    except OSError as err:
        if not is_disk_full(err):
            raise
        raise StoreError(
            f"{out}: no space left on the device ({err.strerror}); every trajectory marked complete is "
            "intact: free some space and run the same command again to resume"
        ) from None
    finally:
        lock.close()
        dist.close()


def _record_blocks(base, recipe: Recipe, spec: StoreSpec, loc, blocks: list[int], batch_size: int,
                   clear: bool = False, on_start=None, on_progress=None, kept: dict[int, int] | None = None) -> int:
    config = dataclasses.replace(recipe.sampler, steps=spec.steps)
    kept = {b: k for b, k in (kept or {}).items() if b in blocks}  # blocks whose first k trajectories stay
    indices = [i for b in blocks for i in spec.block_range(b)[kept.get(b, 0) :]]
    if on_start:
        on_start(len(indices))
    if not indices:
        return 0
    run = resolve_run(base, config, "vanilla")  # the teacher: every step a full base call
    with BlockWriter(loc, spec, blocks, clear=clear, kept=kept) as out:  # the crash-safe write order lives there
        for lo in range(0, len(indices), batch_size):
            batch = indices[lo : lo + batch_size]
            conditions = conditions_for(recipe, spec.seed, batch)
            seeds = [trajectory_seed(spec.seed, i) for i in batch]
            rec = _FeatureRecorder(len(batch), spec)
            result = run.sample(conditions, seeds, observers=(rec,))
            out.add(batch, rec.values, rec.scale, result.tokens.cpu().numpy(), result.order.cpu().numpy(), seeds,
                    conditions)
            if on_progress:
                on_progress(len(batch))
    return len(indices)
