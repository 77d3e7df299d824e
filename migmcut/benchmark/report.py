"""What a bench reports: the rows (speedups, the vanilla front, quality), bench.json, bench.csv, the
pareto figure with its label placement, and the rollout-error report of a store.

    files = write_outputs(out_dir, result)   # bench.json, bench.csv, pareto.png
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from migmcut import front
from migmcut.benchmark.plan import Configuration, Plan
from migmcut.files import atomic_write_bytes
from migmcut.methods import get_method
from migmcut.policies import partial_calls


def bound(steps: int, budget: int, c: float) -> float:
    return steps / (budget + (steps - budget) * c)


@dataclass
class BenchResult:
    rows: list[dict]
    primary: str | None
    higher_is_better: bool = True
    timing: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    higher: dict = field(default_factory=dict)  # every compared metric -> higher is better

    def to_dict(self) -> dict:
        return {"rows": self.rows, "primary": self.primary, "higher_is_better": self.higher_is_better,
                "higher": self.higher, "timing": self.timing, "settings": self.settings}


def _round(x, n=6):
    return None if x is None else round(float(x), n)


SPREAD = ("base_calls", "steps", "shortcut_calls")  # per-sample figures a row reports the spread of


def per_sample_summary(per_sample: dict[str, list[int]], forwards: list[int]) -> dict:
    """Mean, std, min and max over the samples of each per-sample figure (`generation.per_sample_figures`),
    and `base_forwards_per_batch`: the base forwards each sampled batch ran (`SampleResult.counts`),
    on average: an adaptive method runs the rows that need the base as one sub-batch per step, so
    this is what its subsetting costs in calls (a fixed method: its budget)."""
    out = {name: {"mean": float(np.mean(v)), "std": float(np.std(v)), "min": int(np.min(v)), "max": int(np.max(v))}
           for name, v in per_sample.items() if name in SPREAD and len(v)}
    out["base_forwards_per_batch"] = float(np.mean(forwards)) if forwards else None
    return out


def spread_columns(per_sample: dict) -> dict:
    """A row's per-sample columns: base_calls_mean ... steps_max, shortcut_calls_mean, base_forwards_per_batch."""
    out = {f"{name}_{stat}": _round(fig[stat], 4) for name, fig in per_sample.items() if name in SPREAD
           for stat in ("mean", "std", "min", "max") if name != "shortcut_calls" or stat == "mean"}
    if per_sample:
        out["base_forwards_per_batch"] = _round(per_sample.get("base_forwards_per_batch"), 4)
    return out


def bench_result(plan: Plan, configs: list[Configuration], sampled: dict[str, dict], seconds: dict[str, float],
                 timing: dict, metrics: list, bootstrapped: bool) -> BenchResult:
    """Every configuration's row, from what `run_bench` measured: `sampled` (label -> quality, scores,
    call counts, source), `seconds` per image (label ->), `timing` (c, or {}); vanilla-N is `configs[0]`."""
    higher = {m.primary: m.higher_is_better for m in metrics}
    n = len(plan.conditions)
    vanilla = {c.steps: sampled[c.label]["scores"] for c in configs if c.method == "vanilla"}
    cost = {c.steps: seconds[c.label] for c in configs if c.method == "vanilla"}
    # the vanilla family: fixed-step vanilla and adaptive vanilla (`Method.vanilla_family`), by label
    family = [c for c in configs if c.method != "vanilla" and get_method(c.method).vanilla_family]
    ref = configs[0]
    ref_s = seconds[ref.label]
    # what a perfect shortcut would reach: vanilla-N's quality at the row's cost
    ceiling_of = front.front_vanilla(sampled[ref.label]["scores"], vanilla, cost, higher, plan.level)
    rows = []
    for cfg in configs:
        got = sampled[cfg.label]
        sc: front.Scores = got["scores"]
        s = seconds[cfg.label]
        per_sample = got.get("per_sample") or {}
        # an adaptive row: base calls per sample, on average (its batch count is the base forwards it ran)
        calls = per_sample["base_calls"]["mean"] if cfg.adaptive and "base_calls" in per_sample else got["counts"].get("full", 0)
        steps = per_sample["steps"]["mean"] if cfg.adaptive and "steps" in per_sample else cfg.steps
        row = {
            "method": cfg.method,
            "steps": cfg.steps,
            "budget": cfg.budget,
            "base_calls": _round(calls, 4) if cfg.adaptive else calls,
            "shortcut_calls": got["counts"].get("shortcut", 0),
            "partial_calls": partial_calls(got["counts"]),
            "schedule": cfg.schedule,
            "full_steps": cfg.full_steps,
            "label": cfg.label,
            "seconds_per_image": _round(s),
            "speedup": 1.0 if cfg.reference else _round(ref_s / s, 4),
            "quality": {k: _round(v) for k, v in got["quality"].items()},
            "interval": {m: [_round(v) for v in iv] for m in higher if (iv := sc.interval(m, plan.level))},
            "matches_reference": front.at_least_as_good(sc, sampled[ref.label]["scores"], higher, plan.level),
            "images": got["source"],
        }
        if cfg.method != "vanilla":
            # the row's cost in vanilla-N steps, and what each of its other steps cost (measured, in one run)
            equivalents = s / (ref_s / ref.steps)
            row["base_call_equivalents"] = _round(equivalents, 3)
            row["step_cost"] = _round((equivalents - calls) / (steps - calls), 4) if steps > calls else None
            row["as_good_vanilla"] = good = front.as_good(sc, vanilla, higher, plan.level)
            v = front.cheapest(good, cost)
            # a row better than every vanilla run is judged against the most steps run (a lower bound)
            row["front_vanilla"] = f"vanilla-{v if v is not None else max(vanilla)}"
            row["front_speedup"] = _round(cost[v if v is not None else max(vanilla)] / s, 4)
            row["front_beyond"] = v is None
            # against fixed-step vanilla alone; front_* is against the vanilla family (adaptive vanilla too)
            row["front_vanilla_fixed"], row["front_speedup_fixed"] = row["front_vanilla"], row["front_speedup"]
            if family and not get_method(cfg.method).vanilla_family:
                rivals = {**{f"vanilla-{n}": vanilla[n] for n in vanilla}, **{c.label: sampled[c.label]["scores"] for c in family}}
                rival_cost = {**{f"vanilla-{n}": cost[n] for n in cost}, **{c.label: seconds[c.label] for c in family}}
                best = front.front_vanilla(sc, rivals, rival_cost, higher, plan.level)
                if best is not None:
                    row["front_vanilla"], row["front_speedup"] = best, _round(rival_cost[best] / s, 4)
            if ceiling_of is not None:
                row["ceiling_vanilla"], row["ceiling"] = f"vanilla-{ceiling_of}", _round(cost[ceiling_of] / s, 4)
        if cfg.method == "shortcut" and timing:
            row["bound"] = _round(bound(cfg.steps, cfg.budget, timing["c"]), 4)
        if cfg.knobs:
            row["knobs"] = dict(cfg.knobs)
        row.update(spread_columns(per_sample))
        rows.append(row)
    primary = metrics[0].primary if metrics else None
    higher_is_better = metrics[0].higher_is_better if metrics else True
    settings = {"num_samples": n, "batch_size": plan.batch_size, "repeats": plan.repeats, "warmup": plan.warmup,
                "steps": plan.sampler.steps, "bootstrap": plan.bootstrap if bootstrapped else 0,
                "level": plan.level, "vanilla_steps": sorted(vanilla)}
    return BenchResult(rows, primary, higher_is_better, {k: _round(v) for k, v in timing.items()}, settings, higher)


def pareto_front(xs: list[float], ys: list[float], higher_is_better: bool = True) -> list[int]:
    """Indices of the points no other point beats on both axes (x lower is better), by increasing x."""
    sign = 1.0 if higher_is_better else -1.0
    pts = [(x, sign * y, i) for i, (x, y) in enumerate(zip(xs, ys)) if x is not None and y is not None]
    pts.sort(key=lambda p: (p[0], -p[1]))
    front_idx, best = [], -np.inf
    for x, y, i in pts:
        if y > best:
            front_idx.append(i)
            best = y
    return front_idx


CSV_COLUMNS = ["label", "method", "schedule", "steps", "budget", "base_calls", "shortcut_calls", "partial_calls",
               "base_call_equivalents", "step_cost", "seconds_per_image", "speedup", "front_vanilla", "front_speedup", "ceiling", "bound"]


# after the metrics' columns: the vanilla-family front (adaptive vanilla rows) and the per-sample spread
LATER_COLUMNS = ["front_vanilla_fixed", "front_speedup_fixed", "base_calls_mean", "base_calls_std", "base_calls_min",
                 "base_calls_max", "steps_mean", "steps_std", "steps_min", "steps_max", "shortcut_calls_mean",
                 "base_forwards_per_batch"]


def csv_text(rows: list[dict]) -> str:
    metrics = list(dict.fromkeys(k for r in rows for k in r["quality"]))
    compared = list(dict.fromkeys(k for r in rows for k in r.get("interval", {})))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS + metrics + [f"{m}_{end}" for m in compared for end in ("lo", "hi")] + LATER_COLUMNS)
    blank = lambda v: "" if v is None else v  # noqa: E731
    for r in rows:
        iv = r.get("interval", {})
        w.writerow([blank(r.get(c)) for c in CSV_COLUMNS] + [blank(r["quality"].get(m)) for m in metrics]
                   + [blank(iv[m][j]) if m in iv else "" for m in compared for j in (0, 1)]
                   + [blank(r.get(c)) for c in LATER_COLUMNS])
    return buf.getvalue()


def place_labels(ax, points: list[tuple[float, float, str]], fontsize: int = 7) -> list:
    """Annotate each point with its label at the nearest of rings of offsets whose box overlaps no
    label or marker placed before it and stays inside the axes (a leader line joins far labels).
    Returns the annotations."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes_box = ax.get_window_extent(renderer)
    to_px = ax.transData.transform
    from matplotlib.transforms import Bbox

    markers = [Bbox.from_extents(px - 4, py - 4, px + 4, py + 4)  # the markers themselves, a few pixels each way
               for px, py in (to_px((x, y)) for x, y, _ in points)]
    offsets = [(r * math.cos(a), r * math.sin(a)) for r in (6, 14, 24, 36, 50, 66, 84, 104, 126)
               for a in (math.pi * k / 8 for k in range(16))]
    placed, out = [], []
    for x, y, text in sorted(points, key=lambda p: p[0]):
        best = None
        for dx, dy in offsets:
            ann = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=fontsize,
                              ha="left" if dx >= 0 else "right", va="bottom" if dy >= 0 else "top",
                              arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "gray"} if math.hypot(dx, dy) > 10 else None)
            box = label_box(ann, renderer)
            inside = axes_box.x0 <= box.x0 and box.x1 <= axes_box.x1 and axes_box.y0 <= box.y0 and box.y1 <= axes_box.y1
            clashes = sum(box.overlaps(p) for p in placed + markers) + (0 if inside else 100)
            if best is None or clashes < best[0]:
                if best is not None:
                    best[1].remove()
                best = (clashes, ann, box)
            else:
                ann.remove()
            if clashes == 0:
                break
        placed.append(best[2])
        out.append(best[1])
    return out


def label_box(ann, renderer):
    """The text's own box, without its leader line (which may cross other labels)."""
    from matplotlib.text import Text

    ann.update_positions(renderer)  # places the text at its offset (Annotation's own extent does this first)
    return Text.get_window_extent(ann, renderer)


def pareto_figure(result: BenchResult):
    """One panel per compared metric: quality (with its interval) against seconds per image, the
    vanilla front as a line, every point labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result.rows
    metrics = list(result.higher) or ([result.primary] if result.primary else [])
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(7.5 * max(1, len(metrics)), 5.5), dpi=110,
                             squeeze=False)
    panels = []
    for ax, metric in zip(axes[0], metrics or [None]):
        up = result.higher.get(metric, result.higher_is_better)
        pts = []
        for r in rows:
            y = r["quality"].get(metric) if metric else None
            if y is None or r["seconds_per_image"] is None:
                continue
            x = r["seconds_per_image"]
            iv = r.get("interval", {}).get(metric)
            yerr = [[max(y - iv[0], 0)], [max(iv[1] - y, 0)]] if iv else None
            ax.errorbar([x], [y], yerr=yerr, fmt="s" if r.get("schedule") == "searched" else "o",
                        color=get_method(r["method"]).colour, ms=5, capsize=3, lw=1)
            pts.append((x, y, r["label"]))
        van = [r for r in rows if r["method"] == "vanilla" and r["quality"].get(metric) is not None]
        van = [van[i] for i in pareto_front([r["seconds_per_image"] for r in van], [r["quality"][metric] for r in van], up)]
        if van:
            ax.plot([r["seconds_per_image"] for r in van], [r["quality"][metric] for r in van], "--",
                    color=get_method("vanilla").colour, lw=1, label="vanilla front")
            ax.legend(loc="lower right" if up else "upper right", fontsize=8)
        ax.set_xlabel("seconds per image (sampler)")
        ax.set_ylabel(f"{metric or 'quality'} ({'higher' if up else 'lower'} is better)")
        ax.set_title(f"speed / {metric or 'quality'} (bars: {int(result.settings.get('level', 0.95) * 100)}% paired bootstrap)",
                     fontsize=9)
        ax.grid(alpha=0.3)
        ax.margins(x=0.15, y=0.15)
        panels.append((ax, pts))
    fig.tight_layout()
    return fig, [ann for ax, pts in panels for ann in place_labels(ax, pts)]


def pareto_png(result: BenchResult) -> bytes:
    import matplotlib.pyplot as plt

    fig, _ = pareto_figure(result)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_outputs(out: Path, result: BenchResult) -> dict:
    out = Path(out)
    files = {"json": out / "bench.json", "csv": out / "bench.csv", "pareto": out / "pareto.png"}
    blobs = {
        "json": (json.dumps(result.to_dict(), indent=2) + "\n").encode(),
        "csv": csv_text(result.rows).encode(),
        "pareto": pareto_png(result),
    }
    for key, path in files.items():
        atomic_write_bytes(path, blobs[key])
    return {k: str(v) for k, v in files.items()}


def rollout_png(errors: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(16, 6.5), dpi=100)
    titles = {"mse": "MSE", "cos": "cosine", "top1": "top-1 agreement (guided)", "kl": "KL (guided)"}
    for j, m in enumerate(titles):
        for name, err in errors.items():
            one = err.one_step(m)
            axes[0, j].plot(range(len(one)), one, marker="o", label=name)
            byk = err.by_k(m)
            axes[1, j].plot(range(1, len(byk) + 1), byk, marker="o", label=name)
        axes[0, j].set_title(f"one-step {titles[m]}")
        axes[0, j].set_xlabel("step t (predicting t+1)")
        axes[1, j].set_title(f"k-step rollout {titles[m]}")
        axes[1, j].set_xlabel("k (shortcut steps since the full step)")
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            if m in ("mse", "kl"):
                ax.set_yscale("log")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_rollout(out: Path, errors: dict, meta: dict) -> dict:
    out = Path(out)
    payload = {**meta, **{name: err.to_dict() for name, err in errors.items()}}
    files = {"json": out / "rollout.json", "png": out / "rollout.png"}
    blobs = {"json": (json.dumps(payload, indent=2) + "\n").encode(), "png": rollout_png(errors)}
    for key, path in files.items():
        atomic_write_bytes(path, blobs[key])
    return {f"rollout_{k}": str(v) for k, v in files.items()}


