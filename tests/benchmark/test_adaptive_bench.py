"""bench with adaptive rows (issue 31): knob sweeps per entry, the per-sample spread, and the front
against the vanilla family (fixed-step and adaptive vanilla)."""

import csv
import json
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

import migmcut
from migmcut import front
from migmcut.benchmark import Configuration, Plan, bench_result, configurations
from migmcut.cli.main import app
from migmcut.errors import UserError
from migmcut.recipe import load_recipe


def test_entries_sweep_knobs_and_adaptive_budgets_are_caps():
    plan = configurations(16, [4], ["vanilla", "shortcut:6", "recap:8@local=1/2", "adaptive@threshold=0.8/0.9",
                                    "adaptive-shortcut:8@signal=confidence@threshold=0.1/0.2", "adaptive-combined"])
    assert [c.label for c in plan] == [
        "vanilla-16", "vanilla-6", "vanilla-8", "shortcut-16/6", "recap-16/8 (local=1)", "recap-16/8 (local=2)",
        "adaptive-16 (threshold=0.8)", "adaptive-16 (threshold=0.9)",
        "adaptive-shortcut-16/8 (signal=confidence, threshold=0.1)",
        "adaptive-shortcut-16/8 (signal=confidence, threshold=0.2)", "adaptive-combined-16"]
    recap = [c.full_steps for c in plan if c.method == "recap"]  # each placed with its own knob
    assert recap == [[0, 2, 4, 6, 8, 10, 12, 14], [0, 1, 2, 3, 4, 7, 10, 13]]
    adaptive = [c for c in plan if c.adaptive]
    assert [c.budget for c in adaptive] == [None, None, 8, 8, None] and all(c.full_steps is None for c in adaptive)
    assert configurations(16, [4], ["shortcut:4/6"])[-1].knobs is None  # NAME:B1/B2 as before


@pytest.mark.parametrize("entry, message", [
    ("adaptive@threshold=2", r"adaptive: threshold must be in \(0, 1\]"),
    ("adaptive@speed=2", "expected @KNOB=V1/V2 with a knob of adaptive"),
    ("adaptive-shortcut@threshold=", "expected @KNOB=V1/V2"),
    ("adaptive-shortcut:1", "budget=1 cannot be honoured"),
    ("adaptive:4", "adaptive takes no budgets"),
    ("vanilla@threshold=0.5", r"a knob of vanilla \(it has none\)"),
])
def test_bad_entries_are_refused(entry, message):
    with pytest.raises(UserError, match=message):
        configurations(16, [4], ["vanilla", entry])


def test_the_front_takes_adaptive_vanilla_and_keeps_the_fixed_figure():
    metric = SimpleNamespace(primary="acc", higher_is_better=True)
    configs = [Configuration("vanilla", 16, 16, reference=True), Configuration("vanilla", 8, 8),
               Configuration("adaptive", 16, None, knobs={"threshold": 0.9}),
               Configuration("shortcut", 16, 4, [0, 4, 8, 12], "uniform")]
    quality = {"vanilla-16": 0.9, "vanilla-8": 0.7, "adaptive-16 (threshold=0.9)": 0.9, "shortcut-16/4": 0.8}
    seconds = {"vanilla-16": 1.6, "vanilla-8": 0.8, "adaptive-16 (threshold=0.9)": 1.0, "shortcut-16/4": 0.5}
    spread = {"base_calls": {"mean": 10.0, "std": 1.0, "min": 8, "max": 12},
              "steps": {"mean": 10.0, "std": 1.0, "min": 8, "max": 12}, "base_forwards_per_batch": 12.0}
    sampled = {label: {"quality": {"acc": q}, "scores": front.Scores({"acc": q}), "counts": {"full": 12},
                       "per_sample": spread if label.startswith("adaptive") else {}, "source": "sampled"}
               for label, q in quality.items()}
    plan = Plan(None, configs, ["p"] * 4, [0] * 4, 4, bootstrap=0)
    plan.sampler = SimpleNamespace(steps=16)
    rows = {r["label"]: r for r in bench_result(plan, configs, sampled, seconds, {}, [metric], False).rows}
    short = rows["shortcut-16/4"]
    # as good as vanilla-16 and adaptive vanilla: against the family, adaptive vanilla is the faster rival
    assert short["front_vanilla_fixed"] == "vanilla-16" and short["front_speedup_fixed"] == 3.2
    assert short["front_vanilla"] == "adaptive-16 (threshold=0.9)" and short["front_speedup"] == 2.0
    ada = rows["adaptive-16 (threshold=0.9)"]  # adaptive vanilla itself is judged against fixed vanilla
    assert ada["front_vanilla"] == "vanilla-16" and ada["front_speedup"] == 1.6 == ada["front_speedup_fixed"]
    assert ada["base_calls"] == 10.0 and ada["steps_max"] == 12 and ada["base_forwards_per_batch"] == 12.0
    assert ada["budget"] is None and ada["knobs"] == {"threshold": 0.9}


def test_bench_runs_adaptive_rows_and_writes_their_spread(debug_base, checkpoint, tmp_path):
    run = migmcut.bench("debug", shortcut=str(checkpoint), methods=["vanilla", "adaptive@threshold=0.15",
                        "adaptive-combined:6@tokens=0.2"], budgets=[4], num_samples=8, batch_size=4, repeats=1,
                        out=tmp_path / "b", base=debug_base, metrics=["prompt_accuracy"])
    rows = {r["label"]: r for r in run.result.rows}
    ada, comb = rows["adaptive-8 (threshold=0.15)"], rows["adaptive-combined-8/6 (tokens=0.2)"]
    assert ada["steps_mean"] < 8 and ada["base_calls_mean"] == ada["steps_mean"] and ada["shortcut_calls_mean"] == 0
    assert comb["base_calls_max"] <= 6 and comb["steps_min"] >= 1 and comb["base_calls_std"] >= 0
    assert rows["vanilla-8"]["steps_std"] == 0 and "front_speedup_fixed" in comb
    with open(tmp_path / "b" / "bench.csv") as f:
        table = {r["label"]: r for r in csv.DictReader(f)}
    assert float(table["adaptive-8 (threshold=0.15)"]["steps_mean"]) == ada["steps_mean"]
    assert json.loads((tmp_path / "b" / "bench.json").read_text())["settings"]["knobs"]["adaptive"] == {"threshold": 0.9}


def test_bench_cli_refuses_a_bad_sweep_with_exit_2(checkpoint, tmp_path):
    result = CliRunner().invoke(app, ["bench", "--recipe", "debug", "--device", "cpu", "--shortcut", str(checkpoint),
                                      "--methods", "vanilla,adaptive@threshold=0.5/1.5", "--out", str(tmp_path / "b")])
    assert result.exit_code == 2, result.output
    assert "threshold must be in (0, 1]" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()
    assert load_recipe("debug").knobs_for("adaptive-shortcut").signal == "change"
