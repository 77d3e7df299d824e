"""Store benchmark: record overhead, bytes per trajectory per codec, reader throughput.

    OMP_NUM_THREADS=1 python benchmarks/bench_store.py --num 16 --batch-size 8

Uses the tiny-shapes recipe with random weights by default (same shapes as the shipped model:
16x16 tokens, D=128, 8 layers, 16 steps, CFG), so sizes and timings are representative before
real weights exist. Reports (JSON on stdout, a summary on stderr):

- record overhead: `migmcut record` (sampling + encoding + compression + writes + fsync) against
  plain vanilla sampling of the same trajectories (same conditions, seeds and batch size),
  both timed `--repeats` times, interleaved, best of each; and, less noisy on a busy machine,
  the store's own work alone (encode + compress + write + fsync, replayed synchronously) as a
  fraction of the sampling time (writes overlap sampling on a background thread when a core
  is free, so this is an upper bound on what they add);
- bytes per trajectory per codec (features + scales as stored) and the ratio to raw fp32;
- reader pairs/s per codec: PairDataset + collate in batches, with 0 and with 2 spawned workers
  (steady state: the clock starts at the first batch), from each store on local disk;
- an estimate of the trainer's consumption rate: pairs/s of one shortcut forward+backward.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def vanilla(base, recipe, num: int, batch: int, seed: int) -> float:
    from migmcut.recording import conditions_for
    from migmcut.sampler import sample, trajectory_seed

    start = time.perf_counter()
    for lo in range(0, num, batch):
        idx = list(range(lo, min(num, lo + batch)))
        sample(base, conditions_for(recipe, seed, idx), [trajectory_seed(seed, i) for i in idx], recipe.sampler)
    return time.perf_counter() - start


def record_once(base, recipe, out: Path, num: int, batch: int, codec: str, seed: int) -> float:
    from migmcut.recording import record

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    record(recipe, str(out), num=num, batch_size=batch, codec=codec, seed=seed, base=base)
    return time.perf_counter() - start


def write_cost(src: Path, out: Path, codec: str, batch: int) -> float:
    """Seconds the store adds, alone: encode every step + compress + write + fsync + complete flags.

    Replays recorded features (decoded from `src`) through the recorder's own observer and
    writer, synchronously on this thread, into a fresh store: the CPU work recording adds to
    sampling, without the noise of timing two full sampling runs against each other.
    """
    import dataclasses

    import numpy as np

    from migmcut.recording import _FeatureRecorder
    from migmcut.sampler import StepEvent
    from migmcut.store import TrajectoryStore, location
    from migmcut.store.writer import StoreWriter, create_store, write_batch

    s = TrajectoryStore(src)
    spec = dataclasses.replace(s.spec, codec=codec, chunk_steps=0)
    trajs = [s.read(i) for i in range(spec.num)]
    shutil.rmtree(out, ignore_errors=True)
    loc = location.resolve(out)
    create_store(loc, spec)
    writer = StoreWriter(loc, spec)
    start = time.perf_counter()
    for lo in range(0, spec.num, batch):
        idx = list(range(lo, min(spec.num, lo + batch)))
        rec = _FeatureRecorder(len(idx), spec)
        feats = torch.stack([trajs[i]["features"] for i in idx])  # (B, branches, steps, L, D)
        for t in range(spec.steps):
            rec(StepEvent(t, "full", feats[:, :, t], None, None, 0.0))
        finished = []
        for b in range(spec.num_blocks):
            r = spec.block_range(b)
            if r.stop - 1 in idx:
                finished.append((b, {
                    "tokens": np.stack([trajs[i]["tokens"].numpy() for i in r]),
                    "order": np.stack([trajs[i]["order"].numpy() for i in r]),
                    "seeds": np.array([trajs[i]["seed"] for i in r]),
                    "conditions": [trajs[i]["condition"] for i in r],
                }))
        write_batch(writer, idx, rec.values, rec.scale, finished)
    return time.perf_counter() - start


def reader_rate(store: Path, workers: int, batch: int, batches: int) -> float:
    from migmcut.store import PairDataset, pair_loader

    data = PairDataset(store, seed=0, epochs=None, buffer=16)
    it = iter(pair_loader(data, batch_size=batch, num_workers=workers, prefetch_factor=4 if workers else None))
    next(it)  # workers started, buffers filled
    start = time.perf_counter()
    n = 0
    for _ in range(batches):
        n += len(next(it)["index"])
    rate = n / (time.perf_counter() - start)
    del it
    return rate


def trainer_rate(base, store: Path, batch: int, iters: int) -> float | None:
    """Pairs/s of shortcut forward + backward + AdamW step (the trainer's inner loop, no data loading)."""
    try:
        from migmcut.shortcut import Shortcut, ShortcutConfig, ShortcutInputs
        from migmcut.store import PairDataset, collate_pairs
        from migmcut.training import masked_mse
    except ImportError:
        return None
    pairs = []
    for p in PairDataset(store, seed=0):
        pairs.append(p)
        if len(pairs) == batch:
            break
    b = collate_pairs(pairs)
    model = Shortcut(ShortcutConfig(feature_dim=base.feature_dim))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs = ShortcutInputs(base, torch.device("cpu"))(b)
    target, mask = b["h_next"], b["loss_mask"]
    for k in range(iters + 1):
        if k == 1:
            start = time.perf_counter()
        loss = masked_mse(model(**inputs), target, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return batch * iters / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="tiny-shapes")
    ap.add_argument("--set", action="append", default=None, help="recipe overrides (default: base.weights=random)")
    ap.add_argument("--num", type=int, default=16, help="trajectories per run")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs of vanilla and of record (best counts)")
    ap.add_argument("--codecs", default="bf16,fp16,int8,delta")
    ap.add_argument("--reader-batch", type=int, default=64)
    ap.add_argument("--reader-batches", type=int, default=150)
    ap.add_argument("--workers", default="0,2")
    ap.add_argument("--dir", type=Path, default=None, help="where to write the stores (default: a temp dir)")
    args = ap.parse_args()

    from migmcut.base import load_base
    from migmcut.recipe import load_recipe
    from migmcut.store import TrajectoryStore
    from migmcut.store.inspect import info

    torch.set_num_threads(int(__import__("os").environ.get("OMP_NUM_THREADS", "1")))
    recipe = load_recipe(args.recipe, args.set if args.set is not None else ["base.weights=random"])
    base = load_base(recipe.base)
    root = args.dir or Path(tempfile.mkdtemp(prefix="migmcut-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    codecs = args.codecs.split(",")
    n, bs = args.num, args.batch_size
    log(f"{recipe.name}: L={base.num_tokens} D={base.feature_dim} steps={recipe.sampler.steps} "
        f"branches={recipe.sampler.branches}; {n} trajectories, batch {bs}; stores under {root}")

    vanilla(base, recipe, min(bs, n), bs, seed=99)  # warm-up
    times = {"vanilla": [], **{c: [] for c in codecs}}
    for r in range(args.repeats):
        times["vanilla"].append(vanilla(base, recipe, n, bs, seed=0))
        for c in codecs:
            times[c].append(record_once(base, recipe, root / c, n, bs, c, seed=0))
        log(f"repeat {r}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()))
    best = {k: min(v) for k, v in times.items()}

    sizes = {}
    for c in codecs:
        s = info(root / c)
        cost = min(write_cost(root / codecs[0], root / f"replay-{c}", c, bs) for _ in range(args.repeats))
        sizes[c] = {
            "bytes_per_trajectory": s["feature_bytes_per_trajectory"],
            "store_bytes_per_trajectory": round(s["bytes"] / n),
            "ratio_vs_fp32": s["ratio_vs_fp32"],
            "record_overhead": round(best[c] / best["vanilla"] - 1, 4),
            "write_seconds_per_trajectory": round(cost / n, 4),
            "write_cost_vs_sampling": round(cost / best["vanilla"], 4),
        }
    spec = TrajectoryStore(root / codecs[0]).spec
    fp32 = spec.raw_feature_bytes("fp32")
    if "int8" in sizes and "bf16" in sizes:
        int8_vs_bf16 = round(sizes["int8"]["bytes_per_trajectory"] / sizes["bf16"]["bytes_per_trajectory"], 3)
    else:
        int8_vs_bf16 = None

    reader_store = root / ("bf16" if "bf16" in codecs else codecs[0])
    reader = {}
    for w in (int(x) for x in args.workers.split(",")):
        for c in codecs:  # side by side, per codec
            key = f"{c}_workers_{w}"
            reader[key] = round(reader_rate(root / c, w, args.reader_batch, args.reader_batches), 1)
            log(f"reader, {c}, {w} workers: {reader[key]:.0f} pairs/s")
    train = trainer_rate(base, reader_store, args.reader_batch, iters=5)

    result = {
        "recipe": recipe.name,
        "num": n,
        "batch_size": bs,
        "shape": {"branches": spec.branches, "steps": spec.steps, "L": spec.num_tokens, "D": spec.feature_dim},
        "fp32_bytes_per_trajectory": fp32,
        "seconds": {k: round(v, 3) for k, v in best.items()},
        "codecs": sizes,
        "int8_vs_bf16": int8_vs_bf16,
        "reader_pairs_per_s": reader,
        "trainer_pairs_per_s_estimate": round(train, 1) if train else None,
    }
    print(json.dumps(result, indent=2))
    log("")
    log(f"vanilla sampling {best['vanilla']:.2f}s for {n} trajectories ({best['vanilla'] / n:.3f} s each)")
    for c, s in sizes.items():
        log(f"{c:5s} {s['bytes_per_trajectory'] / 1e6:6.3f} MB/trajectory (fp32 {fp32 / 1e6:.3f} MB: "
            f"{s['ratio_vs_fp32']}x smaller), record overhead {100 * s['record_overhead']:+.1f}% end to end; "
            f"store work alone {1000 * s['write_seconds_per_trajectory']:.0f} ms/trajectory "
            f"= {100 * s['write_cost_vs_sampling']:.1f}% of sampling")
    if int8_vs_bf16 is not None:
        log(f"int8 / bf16 bytes: {int8_vs_bf16}")
    log(f"reader pairs/s: {reader}; trainer (forward+backward, batch {args.reader_batch}) ~{train and round(train)} pairs/s")
    if args.dir is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
