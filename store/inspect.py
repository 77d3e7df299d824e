"""`store info` and `store verify`: what a store holds, and whether all of it is intact."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from migmcut.sampler import trajectory_seed
from migmcut.schedule import tokens_per_step
from migmcut.store import location
from migmcut.store.codecs import CODECS, get_codec, is_fill
from migmcut.store.schema import open_arrays, open_group, quiet, read_spec
from migmcut.store.writer import read_complete


def info(url) -> dict:
    """Summary of a store: sizes, settings, how many trajectories are complete."""
    loc = location.resolve(url)
    group, spec = read_spec(loc)
    members = open_arrays(group, spec, loc)
    complete, bad_blocks = read_complete(members, spec)
    arrays = []
    for a in spec.arrays():
        if a.name not in members:
            arrays.append(dict(a.describe(), bytes_stored=None, missing=True))
            continue
        with quiet():
            stored = int(members[a.name].nbytes_stored())
        arrays.append(dict(a.describe(), bytes_stored=stored))
    n_complete = int(complete.sum())
    feature_bytes = sum(a["bytes_stored"] or 0 for a in arrays if a["name"] in ("features", "feature_scale", "feature_step"))
    per_traj = feature_bytes / n_complete if n_complete else None
    return {
        "store": str(loc),
        "schema_version": spec.schema_version,
        "recipe": spec.recipe.get("name"),
        "fingerprint": spec.fingerprint,
        "codec": spec.codec,
        "tolerance": spec.tolerance,
        "num": spec.num,
        "complete": n_complete,
        "unreadable_complete_blocks": bad_blocks,
        "steps": spec.steps,
        "branches": spec.branches,
        "num_tokens": spec.num_tokens,
        "feature_dim": spec.feature_dim,
        "seed": spec.seed,
        "condition": spec.condition,
        "block_size": spec.block_size,
        "chunk_steps": spec.chunk_steps,
        "compute_dtype": spec.compute_dtype,
        "sampler": spec.sampler,
        "arrays": arrays,
        "bytes": location.size_bytes(loc),
        "feature_bytes_per_trajectory": round(per_traj) if per_traj else None,
        "ratio_vs_fp32": round(spec.raw_feature_bytes("fp32") / per_traj, 3) if per_traj else None,
        # what the other codecs would take for these shapes (estimates from measured ratios)
        "feature_bytes_per_trajectory_estimated": {c: spec.estimated_feature_bytes(c) for c in CODECS},
    }


def verify(url, *, repair: bool = False, on_progress: Callable[[int], None] | None = None) -> dict:
    """Check every complete trajectory: readable, checksums good, no missing chunks, consistent.

    Returns {"store", "checked", "complete", "damaged": [indices], "problems": [text]}. With
    `repair`, the blocks holding damaged trajectories are marked incomplete, so that running
    the same `migmcut record` command again recomputes them (bit-identically).
    """

    loc = location.resolve(url)
    group, spec = read_spec(loc)
    problems: list[str] = []
    damaged: set[int] = set()
    unreadable: list[str] = []
    members = open_arrays(group, spec, loc, unreadable)
    for a in spec.arrays():
        if a.name not in members:
            problems.append(next((p for p in unreadable if p.startswith(f"metadata file {a.name}/")),
                                 f"array {a.name} is missing"))
            continue
        arr = members[a.name]
        if tuple(arr.shape) != tuple(a.shape) or (a.dtype != "string" and np.dtype(arr.dtype) != np.dtype(a.dtype)):
            problems.append(f"array {a.name} is {arr.dtype}{tuple(arr.shape)}, the attrs say {a.dtype}{tuple(a.shape)}")
    if problems:
        return {"store": str(loc), "checked": 0, "complete": 0, "damaged": [], "problems": problems}

    complete, bad_blocks = read_complete(members, spec)
    for b in bad_blocks:
        r = spec.block_range(b)
        problems.append(f"complete flags of trajectories {r.start}-{r.stop - 1} are unreadable")
        damaged.update(r)
    codec = get_codec(spec.codec)
    expected_counts = tokens_per_step(spec.num_tokens, spec.steps, spec.sampler.get("schedule", "cosine"))
    checked = 0
    for b in range(spec.num_blocks):
        r = spec.block_range(b)
        idx = [i for i in r if complete[i]]
        if not idx:
            continue
        try:
            with quiet():
                tokens = members["tokens"][r.start : r.stop]
                order = members["order"][r.start : r.stop]
                seeds = members["seeds"][r.start : r.stop]
                conds = members[spec.condition][r.start : r.stop]
        except Exception as err:  # noqa: BLE001 - any failure is damage
            problems.append(f"trajectories {r.start}-{r.stop - 1}: per-trajectory arrays unreadable ({_short(err)})")
            damaged.update(idx)
            continue
        for i in idx:
            k = i - r.start
            why = _check_trajectory(members, spec, codec, i, tokens[k], order[k], int(seeds[k]), conds[k],
                                    expected_counts, trajectory_seed)
            if why:
                problems.append(f"trajectory {i}: {why}")
                damaged.add(i)
            checked += 1
            if on_progress:
                on_progress(1)
    if repair and damaged:
        flags = open_arrays(open_group(loc, "r+"), spec, loc)["complete"]
        with quiet():
            for b in sorted({i // spec.block_size for i in damaged}):
                r = spec.block_range(b)
                flags[r.start : r.stop] = np.zeros(len(r), dtype=bool)
    return {"store": str(loc), "checked": checked, "complete": int(complete.sum()), "damaged": sorted(damaged),
            "problems": problems, "repaired": bool(repair and damaged)}


def _check_trajectory(arrays, spec, codec, i, tokens, order, seed, cond, expected_counts, trajectory_seed) -> str | None:
    try:
        with quiet():
            values = arrays["features"][i]
            scale = arrays[codec.scale][i] if codec.has_scale else None
    except Exception as err:  # noqa: BLE001
        return f"features unreadable ({_short(err)})"
    if values.shape != (spec.branches, spec.steps, spec.num_tokens, spec.feature_dim):
        return f"features have shape {values.shape}"
    if is_fill(values, codec.name).any():
        return "feature chunks are missing"
    if codec.name == "bf16" and ((values & 0x7F80) == 0x7F80).any():
        return "features hold NaN/inf"
    if codec.name == "fp16" and not np.isfinite(values).all():
        return "features hold NaN/inf"
    if codec.name == "int8" and ((values == -128).any() or not np.isfinite(scale).all() or (scale < 0).any()):
        return "int8 features or their scales are invalid"
    if codec.name == "delta" and (not np.isfinite(scale).all() or (scale <= 0).any()):
        return "delta quantization steps are missing or invalid"
    if (tokens < 0).any() or (tokens >= max(spec.codebook_size, 1)).any():
        return "tokens out of range"
    if (order < 0).any() or (order >= spec.steps).any():
        return "order out of range"
    if np.bincount(order, minlength=spec.steps).tolist() != expected_counts:
        return "order does not follow the sampler's schedule"
    if seed != trajectory_seed(spec.seed, i):
        return "seed does not match the run seed"
    if spec.condition == "prompts" and not str(cond):
        return "prompt is empty"
    return None


def _short(err: Exception) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text[:120]


def ranges(indices) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'."""
    out, run = [], []
    for i in sorted(indices):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [i]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(out)


__all__ = ["info", "verify", "ranges"]
