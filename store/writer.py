"""Creating, resuming and writing a store.

The unit of work is a *block* of `block_size` consecutive trajectories: the small per-trajectory
arrays are chunked by block, so exactly one writer owns a block's chunk files and the shard
files of its trajectories. A block is written as: every trajectory's feature shard (one file
each, with the codec's side array), then the block's `tokens`/`order`/condition/`seeds` chunks,
then (local stores) an fsync of all of them, and only then its `complete` chunk. A block whose
`complete` chunk is missing, unreadable or not all true is recomputed from scratch on the next
run; recording is deterministic, so the result is bit-identical to an uninterrupted run.
`BlockWriter` is that protocol for a recording job (background writes in order, bounded memory,
nothing written after a failure).
"""

from __future__ import annotations

import dataclasses
import shutil
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import zarr
from migmcut.store import location
from migmcut.store.codecs import get_codec
from migmcut.store.location import Location
from migmcut.store.schema import (
    ATTR,
    FORMAT,
    StoreSpec,
    open_arrays,
    open_group,
    quiet,
    read_spec,
)
from zarr.core.sync import sync

from migmcut.errors import StoreError, arg


def check_target(loc: Location, spec: StoreSpec, overwrite: bool = False) -> str:
    """What recording `spec` into `loc` would do, touching nothing: 'create', 'overwrite', 'resume'
    or 'grow' (a store recorded with the same settings but fewer trajectories: `spec.num` - its
    trajectories are appended, the same as recording `spec.num` at once).

    Raises StoreError for a location that is not a migmcut store (even with `overwrite`: we never
    delete what we did not write), or one recorded with other settings (unless `overwrite`).
    """
    if loc.local and loc.path.exists() and not loc.path.is_dir():
        raise StoreError(f"{loc}: exists and is not a directory; choose another {arg('out')}")
    if not location.exists(loc) or location.is_empty_dir(loc):
        return "create"
    existing = _existing_spec(loc, overwrite)
    if overwrite:
        return "overwrite"
    diffs = spec.differences(existing)
    if diffs and spec.num > existing.num and not spec.differences(dataclasses.replace(existing, num=spec.num)):
        return "grow"
    if diffs:
        raise StoreError(
            f"{loc} holds a store recorded with different settings: {'; '.join(diffs)}. "
            f"Pass {arg('overwrite', True)} to replace it, or choose another {arg('out')}"
        )
    return "resume"


def prepare_store(loc: Location, spec: StoreSpec, overwrite: bool = False
                  ) -> tuple[list[int], str, StoreSpec, dict[int, int]]:
    """Create, replace, reopen or grow the store for recording: (blocks still to record, action, spec, kept).

    On resume the returned spec is the store's own (its block size and chunking win over the
    ones asked for; everything that changes the data has been checked equal). `kept`: {block: k}
    for blocks to finish whose first k trajectories are complete and stay (the last block of a
    store that grew): only the rest of such a block is recorded.
    """
    action = check_target(loc, spec, overwrite)
    if action not in ("resume", "grow"):
        create_store(loc, spec)  # clears an old store first
        return list(range(spec.num_blocks)), action, spec, {}
    group, existing = read_spec(loc)
    location.remove_partials(loc)
    group = open_group(loc, "r+")
    if action == "grow":
        existing = _grow(group, existing, spec.num, loc)
    _ensure_arrays(group, existing, loc)
    arrays = open_arrays(group, existing, loc)
    complete, _ = read_complete(arrays, existing)
    todo = incomplete_blocks(complete, existing)
    return todo, action, existing, _kept(arrays, existing, complete, todo)


def _grow(group, spec: StoreSpec, num: int, loc: Location) -> StoreSpec:
    """Resize every array to `num` trajectories, then say so in the attrs (a reader never sees attrs
    beyond the arrays; a grow killed between the two is finished by the same command)."""
    grown = dataclasses.replace(spec, num=num)
    with quiet():
        for name, array in open_arrays(group, spec, loc).items():
            if array.shape[0] < num:
                array.resize((num, *array.shape[1:]))
        group.attrs[ATTR] = grown.attrs()
    return grown


def _kept(arrays: dict, spec: StoreSpec, complete: np.ndarray, todo: list[int]) -> dict[int, int]:
    """{block: k} for the blocks to record whose first k trajectories are complete (a block's flags are
    written at once, so only a grown store's last block has some) and readable."""
    kept = {}
    for b in todo:
        r = spec.block_range(b)
        k = int(np.argmin(complete[r.start : r.stop]))  # the first incomplete one
        if k and _read_small(arrays, spec, r.start, r.start + k) is not None:
            kept[b] = k
    return kept


def _read_small(arrays: dict, spec: StoreSpec, lo: int, hi: int) -> dict | None:
    """Trajectories lo..hi-1's tokens, order, seeds and conditions, or None if unreadable."""
    try:
        with quiet():
            conditions = arrays[spec.condition][lo:hi]
            return {"tokens": arrays["tokens"][lo:hi], "order": arrays["order"][lo:hi], "seeds": arrays["seeds"][lo:hi],
                    "conditions": [str(c) if spec.condition == "prompts" else int(c) for c in conditions]}
    except Exception:  # noqa: BLE001 - unreadable: the block is recorded whole
        return None


def _existing_spec(loc: Location, overwrite: bool) -> StoreSpec | None:
    """The spec of the migmcut store at `loc` (its arrays' metadata readable); None for a damaged one we may overwrite."""
    try:
        group = open_group(loc, "r")
        attrs = group.attrs.asdict().get(ATTR)
    except Exception:  # noqa: BLE001 - anything unreadable is "not a store"
        attrs = None
    if not isinstance(attrs, dict) or attrs.get("format") != FORMAT:
        raise StoreError(
            f"{loc} exists and is not a migmcut trajectory store; refusing to touch it "
            f"(choose another {arg('out')}, or an empty directory)"
        )
    try:
        group, spec = read_spec(loc)
        open_arrays(group, spec, loc)
        return spec
    except StoreError:
        if overwrite:
            return None
        raise


def create_store(loc: Location, spec: StoreSpec):

    if loc.local:
        try:
            loc.path.mkdir(parents=True, exist_ok=True)
            probe = loc.path / ".migmcut-write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise StoreError(f"{arg('out', loc)}: cannot write there ({err.strerror or err}); choose another location") from None
        for child in loc.path.iterdir():  # an old store goes; its directory stays (the writer lock is on it)
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    try:
        with quiet():
            group = zarr.open_group(location.zarr_store(loc, read_only=False), mode="w-" if loc.local else "w",
                                    attributes={ATTR: spec.attrs()})
    except (OSError, PermissionError, NotImplementedError) as err:
        raise StoreError(f"{arg('out', loc)}: cannot write there ({err}); choose another location") from None
    _ensure_arrays(group, spec, loc)
    return group


def _ensure_arrays(group, spec: StoreSpec, loc: Location) -> None:
    """Create the arrays a store lacks (a creator killed half-way); check the others' shapes."""
    existing = open_arrays(group, spec, loc)
    for a in spec.arrays():
        if a.name in existing:
            arr = existing[a.name]
            if tuple(arr.shape) != tuple(a.shape):
                raise StoreError(f"store array {a.name} has shape {arr.shape}, its attrs say {a.shape}: damaged store")
            continue
        with quiet():
            group.create_array(
                a.name, shape=a.shape, dtype=a.dtype, chunks=a.chunks, shards=a.shards, fill_value=a.fill,
                filters=a.filters or None, compressors=a.compressors, dimension_names=a.dims,
                attributes=a.attrs, overwrite=True,
            )


def read_complete(arrays: dict, spec: StoreSpec) -> tuple[np.ndarray, list[int]]:
    """(complete flags (n,) bool, blocks whose `complete` chunk could not be read); `arrays`: `open_arrays`'."""
    if "complete" not in arrays:  # a damaged layout (`store verify` names it): nothing is complete
        return np.zeros(spec.num, dtype=bool), list(range(spec.num_blocks))
    arr = arrays["complete"]
    try:
        with quiet():
            return np.asarray(arr[: spec.num], dtype=bool), []
    except Exception:  # noqa: BLE001 - a damaged chunk: find which, count its block incomplete
        pass
    flags = np.zeros(spec.num, dtype=bool)
    bad = []
    for b in range(spec.num_blocks):
        r = spec.block_range(b)
        try:
            with quiet():
                flags[r.start : r.stop] = arr[r.start : r.stop]
        except Exception:  # noqa: BLE001
            bad.append(b)
    return flags, bad


def incomplete_blocks(complete: np.ndarray, spec: StoreSpec) -> list[int]:
    return [b for b in range(spec.num_blocks) if not complete[spec.block_range(b).start : spec.block_range(b).stop].all()]


class StoreWriter:
    """Writes whole trajectories' features and whole blocks into an existing store."""

    def __init__(self, loc: Location, spec: StoreSpec):
        self.loc, self.spec = loc, spec
        group = open_group(loc, "r+")
        self.group = open_arrays(group, spec, loc)  # array handles, opened once
        self.store = group.store
        self.features = self.group["features"]
        side = get_codec(spec.codec).scale
        self.scale = self.group.get(side) if side else None  # int8 feature_scale / delta feature_step

    def _shard_keys(self, indices) -> list[str]:
        """The keys of trajectories `indices`' own shards (features, and int8's feature_scale)."""
        keys = []
        for name in ("features", "feature_scale"):
            if name in self.group:
                arr = self.group[name]
                keys += [f"{name}/{arr.metadata.encode_chunk_key((i,) + (0,) * (arr.ndim - 1))}" for i in indices]
        return keys

    def _keys(self, block: int) -> list[str]:
        """Every chunk/shard key a block owns, its `complete` chunk first."""
        spec, g = self.spec, self.group
        r = spec.block_range(block)
        keys = [f"complete/{g['complete'].metadata.encode_chunk_key((block,))}", *self._shard_keys(r)]
        for name in ("tokens", "order", spec.condition, "seeds", "feature_step"):
            if name not in g:
                continue
            arr = g[name]
            keys.append(f"{name}/{arr.metadata.encode_chunk_key((block,) + (0,) * (arr.ndim - 1))}")
        return keys

    def clear_block(self, block: int, keep: int = 0) -> None:
        """Delete whatever an interrupted or damaged earlier write of the block left (complete flags first).

        A rewrite must not read old shards: zarr merges partial shard writes with what is stored,
        and a torn or corrupted shard would make that fail. With `keep`, the block's first `keep`
        trajectories stay: only the others' shards go (the block's small arrays and flags are
        written whole again when it is finished).
        """

        r = self.spec.block_range(block)
        for key in self._shard_keys(range(r.start + keep, r.stop)) if keep else self._keys(block):
            sync(self.store.delete(key))

    def write_features(self, start: int, values: np.ndarray, scale: np.ndarray | None = None) -> None:
        """Features of trajectories start, start+1, ...: values (k, branches, steps, L, D), and the
        codec's side array (int8 scales (k, branches, steps, L), delta steps (k, branches))."""
        stop = start + len(values)
        with quiet():
            self.features[start:stop] = values
            if self.scale is not None:
                self.scale[start:stop] = scale

    def finish_block(self, block: int, tokens: np.ndarray, order: np.ndarray, seeds: np.ndarray, conditions: list) -> None:
        """The block's small arrays, then (local) fsync, then its `complete` flags."""
        spec, g = self.spec, self.group
        r = spec.block_range(block)
        if len(tokens) != len(r):
            raise ValueError(f"block {block} has {len(r)} trajectories, got {len(tokens)}")
        with quiet():
            g["tokens"][r.start : r.stop] = np.asarray(tokens, dtype=np.int32)
            g["order"][r.start : r.stop] = np.asarray(order, dtype=np.int16)
            g["seeds"][r.start : r.stop] = np.asarray(seeds, dtype=np.uint32)
            if spec.condition == "prompts":
                g["prompts"][r.start : r.stop] = np.array(list(conditions), dtype=str)
            else:
                g["labels"][r.start : r.stop] = np.asarray(conditions, dtype=np.int32)
        keys = self._keys(block)
        if self.loc.local:
            location.fsync_tree([self.loc.path / k for k in keys[1:]])
        with quiet():
            g["complete"][r.start : r.stop] = np.ones(len(r), dtype=bool)
        if self.loc.local:
            location.fsync_tree([self.loc.path / keys[0]])


class BlockWriter:
    """The block-write protocol of a recording job, in one place (crash safety lives here).

        with BlockWriter(loc, spec, blocks, clear=resuming) as out:
            for batch ...:
                out.add(indices, values, scale, tokens, order, seeds, conditions)

    `blocks` are the blocks this process owns. With `clear`, whatever an earlier run left of them
    is deleted first (rewritten from scratch, never merged), but for `kept` blocks ({block: k}, see
    `prepare_store`), whose first k trajectories stay and are not to be added again. `add` hands a sampled batch (any
    indices of those blocks, in any grouping) to one background thread, which writes in
    submission order: the batch's feature shards, then, for every block the batch completes, its
    small arrays, fsync, and only then its `complete` flags. At most `depth` batches wait (bounded
    memory); after a failed write nothing more is written (no block is ever marked complete after
    an earlier write of it failed), and the failure is raised from the next `add` or from leaving
    the `with`.
    """

    def __init__(self, loc: Location, spec: StoreSpec, blocks: list[int], *, clear: bool = False, depth: int = 2,
                 kept: dict[int, int] | None = None):
        self.spec, self.depth = spec, depth
        self.writer = StoreWriter(loc, spec)
        kept = kept or {}
        if clear:
            for b in blocks:
                self.writer.clear_block(b, kept.get(b, 0))
        L = spec.num_tokens
        self.pending = {}  # per unfinished block: its small arrays, filled as its trajectories are sampled
        for b in blocks:
            r = spec.block_range(b)
            k = len(r)
            p = {"tokens": np.empty((k, L), np.int32), "order": np.empty((k, L), np.int16),
                 "seeds": np.empty(k, np.uint32), "conditions": [None] * k, "left": k}
            if kept.get(b):  # its first trajectories stay: their small arrays are written again with the rest
                n = kept[b]
                old = _read_small(self.writer.group, spec, r.start, r.start + n)
                if old is None:
                    raise StoreError(f"{loc}: trajectories {r.start}-{r.start + n - 1} became unreadable while "
                                     "recording: run `migmcut store verify`")
                for name in ("tokens", "order", "seeds"):
                    p[name][:n] = old[name]
                p["conditions"][:n] = old["conditions"]
                p["left"] -= n
            self.pending[b] = p
        self.futures: list[Future] = []
        self.failed = False
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="migmcut-store-writer")

    def __enter__(self) -> "BlockWriter":
        return self

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None:
                for f in self.futures:
                    f.result()
        finally:
            self.pool.shutdown(wait=True)

    def add(self, indices: list[int], values: np.ndarray, scale, tokens, order, seeds, conditions) -> None:
        """A sampled batch: values (k, branches, steps, L, D) (+ the codec's side array) and the small
        per-trajectory arrays of `indices`; returns once it is queued."""
        for f in self.futures:  # stop at the first failed write, not `depth` batches later
            if f.done() and f.exception() is not None:
                f.result()
        finished = []
        spec = self.spec
        for j, i in enumerate(indices):
            b = i // spec.block_size
            k = i - spec.block_range(b).start
            p = self.pending[b]
            p["tokens"][k], p["order"][k] = tokens[j], order[j]
            p["seeds"][k], p["conditions"][k] = seeds[j], conditions[j]
            p["left"] -= 1
            if p["left"] == 0:
                finished.append((b, self.pending.pop(b)))
        while len(self.futures) >= self.depth:
            self.futures.pop(0).result()
        self.futures.append(self.pool.submit(self._write, list(indices), values, scale, finished))

    def _write(self, indices, values, scale, finished) -> None:
        if self.failed:
            raise RuntimeError("an earlier store write failed")
        try:
            write_batch(self.writer, indices, values, scale, finished)
        except BaseException:
            self.failed = True
            raise


def write_batch(writer: StoreWriter, indices: list[int], values: np.ndarray, scale, finished: list) -> None:
    """Synchronously: the batch's features (one zarr call per contiguous run of indices), then each
    finished block's small arrays and `complete` flags (`finished`: (block, its arrays))."""
    j = 0
    while j < len(indices):
        k = j + 1
        while k < len(indices) and indices[k] == indices[k - 1] + 1:
            k += 1
        writer.write_features(indices[j], values[j:k], None if scale is None else scale[j:k])
        j = k
    for b, p in finished:
        writer.finish_block(b, p["tokens"], p["order"], p["seeds"], p["conditions"])
