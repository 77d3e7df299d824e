"""`migmcut bench` as a library: every configuration on the same prompts and seeds, timed and scored.

    plan = Plan(recipe.sampler, configurations(16, [4, 6], ["cache", "shortcut"]), prompts, seeds, 16)
    result = run_bench(base, plan, build_metrics(["prompt_accuracy", "fd"]), shortcut=net)
    write_outputs(out_dir, result)           # bench.json, bench.csv, pareto.png

or all of it in one call, from a recipe: `migmcut.bench(recipe, budgets=[4, 6], out="runs/bench")`.

Configurations: vanilla at N steps (the reference) and at the other step counts of the front
(default: every budget B, then refined: see `migmcut.front`), then each accelerated method at
(N, B): the cache, recap and mlcache with their own placements, the shortcut and the hybrid with
the searched schedule where one is saved (`auto`, as generate does), the uniform one, or both. Quality: every configuration generates all the samples (same conditions, same
per-sample seeds) and the metrics score them, with paired bootstrap intervals. Timing: seconds
per image of the sampler (decoding excluded, it is the same for every configuration), on one
batch of the bench batch size, after `warmup` untimed runs, median over `repeats` runs; the
repeats go round-robin over all configurations at the end, so that a drift in machine load hits
them all alike. `speedup` is vanilla-N's seconds per image over the row's; `front_speedup` that of
the fastest vanilla run at least as good on every metric; `ceiling` the front_speedup the row
would have at vanilla-N's quality (a perfect shortcut at the same cost). Shortcut rows also carry
`bound` = N / (B + (N - B) c), with c one shortcut call over one base forward, measured at the
bench batch size (both CFG branches). Every accelerated row also has `base_call_equivalents`, its
seconds per image in vanilla-N steps, and `step_cost`, what each of its non-full steps cost in
those units (its measured c, sampler work included), both from the same timing runs.

Nothing is lost on an interrupt: each sampled configuration and each timing run is kept in
OUT/state/ as it finishes (`BenchState`), and the same bench again continues from there.

The modules, by concern: `plan` (the configurations, prompts, seeds), `run` (sampling, timing,
`run_bench`), `state` (OUT/state/), `report` (rows, bench.json / bench.csv, the figures), `store`
(what a bench reads from a trajectory store), `job` (`bench`, the whole job) and `search`
(`search_schedules`, the job of `migmcut schedule search`, whose placements the bench runs).
"""

from __future__ import annotations

from migmcut.benchmark.job import BenchRun, bench
from migmcut.benchmark.plan import (
    SCHEDULE_MODES, Configuration, Plan, check_plan, configurations, default_prompts, expand, int_list, method_knobs,
    metric_settings, name_list, read_prompts_file, sample_seeds, split_entry, split_methods, with_knobs,
)
from migmcut.benchmark.report import (
    CSV_COLUMNS, LATER_COLUMNS, BenchResult, bench_result, bound, csv_text, label_box, pareto_figure, pareto_front,
    pareto_png, per_sample_summary, place_labels, spread_columns, rollout_png, write_outputs, write_rollout,
)
from migmcut.benchmark.run import generate_images, measure_c, run_bench, sampler_for, time_configurations, timing_runs
from migmcut.benchmark.search import SearchRun, search_and_save, search_schedules
from migmcut.benchmark.state import RESULT_FILES, STATE_DIR, BenchState
from migmcut.benchmark.store import open_store, store_samples, validation_indices

__all__ = [
    "bench", "BenchRun",
    "SCHEDULE_MODES", "Configuration", "Plan", "check_plan", "configurations", "default_prompts", "expand",
    "int_list", "method_knobs", "metric_settings", "name_list", "read_prompts_file", "sample_seeds", "split_entry",
    "split_methods", "with_knobs",
    "CSV_COLUMNS", "LATER_COLUMNS", "per_sample_summary", "spread_columns", "BenchResult", "bench_result", "bound", "csv_text", "label_box", "pareto_figure",
    "pareto_front", "pareto_png", "place_labels", "rollout_png", "write_outputs", "write_rollout",
    "generate_images", "measure_c", "run_bench", "sampler_for", "time_configurations", "timing_runs",
    "RESULT_FILES", "STATE_DIR", "BenchState",
    "open_store", "store_samples", "validation_indices",
    "SearchRun", "search_and_save", "search_schedules",
]
