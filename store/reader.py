"""Reading a store: whole trajectories, and the training pairs the shortcut learns from.

    store = TrajectoryStore("runs/store")
    train, val = store.split(0.05, seed=0)                 # trajectory-level split
    data = PairDataset(store, train, seed=0, epochs=None)  # an IterableDataset of pairs
    loader = pair_loader(data, batch_size=64, num_workers=2)
    for batch in loader: ...                               # dicts, see `collate_pairs`

A pair (trajectory i, branch b, step t), for t = 0 .. steps-2 (with `window=k`, an item is
instead the list of the k consecutive pairs t .. t+k-1 of one trajectory and branch, for
unrolled training, and a batch is the list of their k batches):
    h          (L, D) float32   features at step t (input of step t's head)
    h_next     (L, D) float32   features at step t+1 (the regression target)
    new_ids    (M,)   int64     token ids fixed at step t (tokens[i][order[i] == t])
    new_pos    (M,)   int64     their positions, ascending
    mask_ratio float            fraction of positions still masked after step t (order > t)
    loss_mask  (L,)   bool      order > t: where h_next is read from at the next step
    branch, step, index, condition (the trajectory's prompt or label, whatever the branch:
    branch 1 is the CFG unconditional branch, which ran with the null condition)

Only complete trajectories are read. A trajectory is read with one zarr read of its feature
shard (plus its scale shard for int8, its steps for delta) and kept compact (codec dtype) in a buffer of
`buffer` trajectories; pairs are decoded to float32 one at a time as they are yielded, drawn
at random across the buffer. The order is a function of (seed, epoch, rank, world, worker,
workers); DataLoader workers and DDP ranks read disjoint trajectories. Use the `spawn`
multiprocessing context (`pair_loader` does): zarr's event-loop thread does not survive fork.
"""

from __future__ import annotations

import dataclasses
import signal
from dataclasses import dataclass

import numpy as np
import torch
from migmcut.store import location
from migmcut.store.codecs import decode, delta_levels, from_levels, get_codec, is_fill
from migmcut.store.schema import open_arrays, quiet, read_spec
from migmcut.store.writer import read_complete
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from migmcut.errors import StoreError, UserError, arg
from migmcut.recipe import behaviour_difference, parse_recipe

_SPLIT_STREAM = 0x73706C6974


@dataclass
class RawTrajectory:
    """One trajectory as stored: features in the codec's dtype (branches, steps, L, D).

    delta: `values` holds the integer levels q (the step differences summed once at read time;
    int16 when they fit) and `scale` the quantization step per branch, so any (branch, step)
    decodes alone as q * step.
    """

    index: int
    values: np.ndarray
    scale: np.ndarray | None
    tokens: np.ndarray  # (L,) int
    order: np.ndarray  # (L,) int
    condition: object
    seed: int
    codec: str

    def features(self, branch=slice(None), step=slice(None)) -> torch.Tensor:
        """Decoded float32 features, e.g. features(0, 3) -> (L, D)."""
        if self.codec == "delta":
            return from_levels(self.values[branch, step], self.scale[branch])
        scale = None if self.scale is None else self.scale[branch, step]
        return decode(self.values[branch, step], scale, self.codec)


class TrajectoryStore:
    """A migmcut trajectory store opened for reading (a path or an fsspec URL)."""

    def __init__(self, url):
        self.url = str(url)
        self.location = location.resolve(url)
        self.group, self.spec = read_spec(self.location)
        self._handles = open_arrays(self.group, self.spec, self.location)  # unreadable metadata: a StoreError now
        self._complete = None

    # -- metadata ------------------------------------------------------------------------------
    @property
    def attrs(self) -> dict:
        return self.spec.attrs()

    num = property(lambda self: self.spec.num)
    steps = property(lambda self: self.spec.steps)
    branches = property(lambda self: self.spec.branches)
    num_tokens = property(lambda self: self.spec.num_tokens)
    feature_dim = property(lambda self: self.spec.feature_dim)
    codec = property(lambda self: self.spec.codec)
    fingerprint = property(lambda self: self.spec.fingerprint)
    condition_kind = property(lambda self: self.spec.condition)

    # -- whether it fits a recipe: the one rule that train, bench and record judge a store by ----------
    def check_base(self, base, recipe_name: str) -> None:
        """StoreError unless the trajectories were recorded with `base` (its fingerprint)."""
        if self.fingerprint != base.fingerprint:
            raise StoreError(f"{arg('store', self.url)} was recorded with base {self.fingerprint}, but recipe "
                             f"{recipe_name} has base {base.fingerprint}: use the recipe the store was recorded with")

    def sampler_difference(self, sampler) -> str | None:
        """The first setting in which `sampler` (a SamplerConfig, at the store's step count) would make other
        trajectories than the recorded ones, or None. By behaviour: a setting the store predates reads as its
        default, one without effect on a trajectory (placement of full steps, a temperature's semantics at
        1) is left out, exactly as `record` compares a store it resumes or grows (`StoreSpec.differences`)."""
        return behaviour_difference(self.spec.sampler, dataclasses.replace(sampler, steps=self.steps))

    def recipe(self):
        """The recorded recipe as a `Recipe` (sampler.steps = the recorded step count)."""

        return parse_recipe(dict(self.spec.recipe), f"store {self.location}")

    def complete(self, refresh: bool = False) -> np.ndarray:
        """(n,) bool: trajectories durably written (unreadable flags count as incomplete)."""
        if self._complete is None or refresh:
            self._complete, _ = read_complete(self._handles, self.spec)
        return self._complete

    def complete_indices(self) -> np.ndarray:
        return np.flatnonzero(self.complete())

    def split(self, val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Trajectory-level (train, val) index arrays over the complete trajectories.

        Membership is a hash of (seed, index) against `val_fraction`, so a trajectory's side
        never depends on which others exist; at least one trajectory goes to val when
        val_fraction > 0 and there are two or more.
        """
        if not 0 <= val_fraction < 1:
            raise UserError(f"validation fraction must be in [0, 1), got {val_fraction}")
        idx = self.complete_indices()
        keys = _hash01(seed, idx)
        is_val = keys < val_fraction
        if val_fraction > 0 and not is_val.any() and len(idx) >= 2:
            is_val[np.argmin(keys)] = True
        return idx[~is_val], idx[is_val]

    # -- data ----------------------------------------------------------------------------------
    def read_raw(self, i: int) -> RawTrajectory:
        """Trajectory i as stored (one read of its feature shard). StoreError if damaged or incomplete."""
        i = int(i)
        if not 0 <= i < self.num:
            raise StoreError(f"trajectory {i} is out of range (the store holds {self.num})")
        if not self.complete()[i]:
            raise StoreError(f"trajectory {i} is not complete (finish the store with `migmcut record`)")
        g, spec = self._arrays(), self.spec
        side = get_codec(spec.codec).scale
        try:
            with quiet():
                values = g["features"][i]
                scale = g[side][i] if side else None
                tokens = g["tokens"][i]
                order = g["order"][i]
                condition = g[spec.condition][i]
                seed = int(g["seeds"][i])
        except (ValueError, OSError, KeyError, RuntimeError) as err:
            raise StoreError(f"{self.location}: trajectory {i} is damaged ({err}); run `migmcut store verify`") from None
        if is_fill(values, spec.codec).any() or (scale is not None and np.isnan(scale).any()) or (tokens < 0).any():
            raise StoreError(f"{self.location}: trajectory {i} has missing chunks; run `migmcut store verify`")
        condition = condition.item() if hasattr(condition, "item") else condition
        if spec.codec == "delta":
            values = delta_levels(values)
        return RawTrajectory(i, values, scale, tokens.astype(np.int64), order.astype(np.int64), condition, seed, spec.codec)

    def read_samples(self, indices) -> tuple[list, list[int], np.ndarray]:
        """(conditions, seeds, final tokens (n, L) int64) of trajectories `indices`, without their
        features: what it takes to sample them again and compare with what was recorded."""
        g = self._arrays()
        conditions = [g[self.condition_kind][i] for i in indices]
        conditions = [c.item() if hasattr(c, "item") else c for c in conditions]
        seeds = [int(g["seeds"][i]) for i in indices]
        tokens = np.stack([g["tokens"][i] for i in indices]).astype("int64")
        return conditions, seeds, tokens

    def _arrays(self) -> dict:
        """Array handles, opened once (each `group[name]` would read the array's metadata again)."""
        return self._handles

    def read(self, i: int) -> dict:
        """Trajectory i decoded: features (branches, steps, L, D) float32, tokens, order, condition, seed."""
        raw = self.read_raw(i)
        return {"features": raw.features(), "tokens": torch.from_numpy(raw.tokens), "order": torch.from_numpy(raw.order),
                "condition": raw.condition, "seed": raw.seed, "index": raw.index}

    def pairs(self, indices=None, **kwargs) -> "PairDataset":
        return PairDataset(self, indices, **kwargs)


def _hash01(seed: int, idx: np.ndarray) -> np.ndarray:
    """splitmix64 of (seed, index) mapped to [0, 1)."""
    with np.errstate(over="ignore"):
        x = np.asarray(idx, dtype=np.uint64) + np.uint64((int(seed) * 0x9E3779B97F4A7C15 + _SPLIT_STREAM) % 2**64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(2**53)


class PairDataset(IterableDataset):
    """Training pairs (h_t, tokens fixed at t, r_t) -> h_{t+1} of a store's trajectories.

    indices: trajectories to use (default: every complete one); seed/epoch: the shuffle;
    epochs: how many passes one iterator makes (None: forever, epoch, epoch+1, ...);
    buffer: trajectories held at once (pairs are drawn at random across them);
    branches: which CFG branches (default all); rank/world: DDP sharding (default: from
    torch.distributed when initialized); even: with world > 1, drop the permutation's tail so
    every rank gets as many trajectories (and so as many pairs) per epoch; window: yield runs of
    this many consecutive pairs (starting steps 0 .. steps-1-window).
    """

    def __init__(self, store, indices=None, *, seed: int = 0, epoch: int = 0, epochs: int | None = 1,
                 shuffle: bool = True, buffer: int = 16, branches=None, rank: int | None = None,
                 world: int | None = None, even: bool = True, window: int = 1):
        super().__init__()
        opened = store if isinstance(store, TrajectoryStore) else TrajectoryStore(store)
        self.url = opened.url
        self.steps, self.num_branches = opened.steps, opened.branches
        self.indices = np.asarray(opened.complete_indices() if indices is None else indices, dtype=np.int64)
        self.branches = tuple(range(opened.branches)) if branches is None else tuple(int(b) for b in branches)
        if any(not 0 <= b < opened.branches for b in self.branches):
            raise UserError(f"branches {self.branches}: the store has {opened.branches}")
        if not 1 <= window < opened.steps:
            raise UserError(f"window must be between 1 and {opened.steps - 1} steps, got {window}")
        self.window = window
        if buffer < 1:
            raise UserError(f"buffer must be >= 1 trajectory, got {buffer}")
        if rank is None or world is None:
            dist = torch.distributed
            ready = dist.is_available() and dist.is_initialized()
            rank = (dist.get_rank() if ready else 0) if rank is None else rank
            world = (dist.get_world_size() if ready else 1) if world is None else world
        if not 0 <= rank < world:
            raise UserError(f"rank {rank} is not in a world of {world}")
        self.seed, self.epoch, self.epochs, self.shuffle = seed, epoch, epochs, shuffle
        self.buffer, self.rank, self.world, self.even = buffer, rank, world, even
        self._store = opened

    def __getstate__(self):  # workers reopen the store themselves
        state = dict(self.__dict__)
        state["_store"] = None
        return state

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def pairs_per_trajectory(self) -> int:
        return len(self.branches) * (self.steps - self.window)

    def rank_indices(self, epoch: int) -> np.ndarray:
        """This rank's trajectories in epoch `epoch`, in reading order (before worker sharding)."""
        order = self.indices
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch, 0x7065726D]).permutation(order)
        if self.even and self.world > 1:
            order = order[: len(order) // self.world * self.world]
        return order[self.rank :: self.world]

    def __len__(self) -> int:
        """Pairs this rank yields per epoch (all its workers together)."""
        return len(self.rank_indices(self.epoch)) * self.pairs_per_trajectory

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        if self._store is None:
            self._store = TrajectoryStore(self.url)
        epoch = self.epoch
        while self.epochs is None or epoch < self.epoch + self.epochs:
            mine = self.rank_indices(epoch)[wid::nw]
            rng = np.random.default_rng([self.seed, epoch, self.rank, wid, 0x62756666])
            yield from self._epoch(mine, rng)
            epoch += 1

    def _epoch(self, mine: np.ndarray, rng: np.random.Generator):
        store = self._store
        todo = iter(mine.tolist())
        active: list[list] = []  # [trajectory, its pairs still to yield (popped from the end)]

        def load():
            for i in todo:
                raw = store.read_raw(i)
                pairs = [(b, t) for b in self.branches for t in range(self.steps - self.window)]
                if self.shuffle:
                    rng.shuffle(pairs)
                else:
                    pairs.reverse()
                return [_Prepared(raw, self.steps), pairs]
            return None

        while len(active) < self.buffer and (item := load()) is not None:
            active.append(item)
        while active:
            if self.shuffle and len(active) > 1:
                counts = np.fromiter((len(p) for _, p in active), dtype=np.int64, count=len(active))
                j = int(np.searchsorted(np.cumsum(counts), rng.integers(counts.sum()), side="right"))
            else:
                j = 0
            traj, pairs = active[j]
            b, t = pairs.pop()
            yield traj.pair(b, t) if self.window == 1 else [traj.pair(b, t + d) for d in range(self.window)]
            if not pairs:
                item = load()
                if item is None:
                    active.pop(j)
                else:
                    active[j] = item


class _Prepared:
    """A trajectory plus what every pair of it needs, computed once."""

    def __init__(self, raw: RawTrajectory, steps: int):
        self.raw = raw
        order = raw.order
        self.by_order = np.argsort(order, kind="stable")  # positions grouped by step, ascending
        self.bounds = np.searchsorted(order[self.by_order], np.arange(steps + 1))

    def pair(self, b: int, t: int) -> dict:
        raw = self.raw
        pos = self.by_order[self.bounds[t] : self.bounds[t + 1]]
        loss_mask = raw.order > t
        return {
            "h": raw.features(b, t),
            "h_next": raw.features(b, t + 1),
            "new_ids": torch.from_numpy(raw.tokens[pos]),
            "new_pos": torch.from_numpy(pos.astype(np.int64)),
            "mask_ratio": float(loss_mask.mean()),
            "loss_mask": torch.from_numpy(loss_mask),
            "branch": b,
            "step": t,
            "index": raw.index,
            "condition": raw.condition,
            "tokens": torch.from_numpy(raw.tokens.astype(np.int64)),  # the final tokens and the step that fixed
            "order": torch.from_numpy(raw.order.astype(np.int64)),  # each: any step's token state
        }


def collate_pairs(pairs: list) -> dict | list[dict]:
    """Stack pairs into a batch; new_ids/new_pos are padded to the batch's largest M with new_mask.

    Windows (lists of k consecutive pairs) become the list of k batches, one per window position.
    """
    if pairs and isinstance(pairs[0], list):
        return [collate_pairs([w[j] for w in pairs]) for j in range(len(pairs[0]))]
    B = len(pairs)
    M = max((len(p["new_ids"]) for p in pairs), default=0)
    new_ids = torch.zeros(B, M, dtype=torch.long)
    new_pos = torch.zeros(B, M, dtype=torch.long)
    new_mask = torch.zeros(B, M, dtype=torch.bool)
    for k, p in enumerate(pairs):
        m = len(p["new_ids"])
        new_ids[k, :m], new_pos[k, :m], new_mask[k, :m] = p["new_ids"], p["new_pos"], True
    batch = {
        "h": _stack([p["h"] for p in pairs]),
        "h_next": _stack([p["h_next"] for p in pairs]),
        "new_ids": new_ids,
        "new_pos": new_pos,
        "new_mask": new_mask,
        "mask_ratio": torch.tensor([p["mask_ratio"] for p in pairs], dtype=torch.float32),
        "loss_mask": _stack([p["loss_mask"] for p in pairs]),
        "branch": torch.tensor([p["branch"] for p in pairs], dtype=torch.long),
        "step": torch.tensor([p["step"] for p in pairs], dtype=torch.long),
        "index": torch.tensor([p["index"] for p in pairs], dtype=torch.long),
        "condition": [p["condition"] for p in pairs],
        "tokens": _stack([p["tokens"] for p in pairs]),
        "order": _stack([p["order"] for p in pairs]),
    }
    if get_worker_info() is not None:
        # In a DataLoader worker, tensors must sit in shared memory before they are queued:
        # otherwise the queue's feeder thread moves them there while pickling, and a worker shut
        # down mid-way aborts ("terminate called without an active exception").
        for value in batch.values():
            if isinstance(value, torch.Tensor):
                value.share_memory_()
    return batch


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """torch.stack, written straight into shared memory inside a DataLoader worker (as default_collate)."""
    if get_worker_info() is None or not tensors:
        return torch.stack(tensors)
    first = tensors[0]
    storage = first._typed_storage()._new_shared(len(tensors) * first.numel(), device=first.device)
    out = first.new(storage).resize_(len(tensors), *first.shape)
    return torch.stack(tensors, out=out)


def pair_loader(dataset: PairDataset, batch_size: int, num_workers: int = 0, **kwargs) -> DataLoader:
    """A DataLoader over pairs with `collate_pairs` and, with workers, the `spawn` context; workers
    leave SIGINT / SIGTERM to the main process (which stops them when it is done with them)."""
    if num_workers > 0:
        kwargs.setdefault("multiprocessing_context", "spawn")
        kwargs.setdefault("persistent_workers", dataset.epochs is None)
        kwargs.setdefault("worker_init_fn", _ignore_stop_signals)
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_pairs, **kwargs)


def _ignore_stop_signals(worker_id: int) -> None:

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


__all__ = ["TrajectoryStore", "RawTrajectory", "PairDataset", "collate_pairs", "pair_loader"]
