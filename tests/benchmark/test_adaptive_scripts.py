"""benchmarks/select_adaptive.py and benchmarks/adaptive_signals.py end to end on the debug recipe."""

import importlib.util
import json
from pathlib import Path

import torch


ROOT = Path(__file__).resolve().parents[2]


def script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_select_adaptive_chooses_a_knob_per_method_on_the_selection_set(checkpoint, tmp_path, capsys):
    out = tmp_path / "sel"
    code = script("select_adaptive").main([
        "--recipe", "debug", "--shortcut", str(checkpoint), "--num-samples", "4", "--batch-size", "4",
        "--metrics", "prompt_accuracy", "--out", str(out),
        "--methods", "adaptive@threshold=0.2/0.5,adaptive-shortcut@threshold=0.1/0.3,adaptive-combined:6@tokens=0.3"])
    assert code == 0
    got = json.loads((out / "selection.json").read_text())
    assert got["prompts"] == "selection-set" and set(got["chosen"]) == {"adaptive", "adaptive-shortcut", "adaptive-combined"}
    assert got["chosen"]["adaptive"]["entry"] in ("adaptive@threshold=0.2", "adaptive@threshold=0.5")
    assert got["chosen"]["adaptive-combined"]["entry"] == "adaptive-combined:6@tokens=0.3"
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("adaptive: adaptive@threshold=")
    assert printed[-1].startswith("migmcut bench --recipe debug --steps 8 --methods vanilla,") and "--seed 1" in printed[-1]


def test_select_adaptive_refuses_bad_sweeps_with_exit_2(checkpoint, tmp_path, capsys):
    code = script("select_adaptive").main(["--recipe", "debug", "--shortcut", str(checkpoint), "--out", str(tmp_path / "s"),
                                           "--methods", "adaptive@threshold=3"])
    assert code == 2 and "threshold must be in (0, 1]" in capsys.readouterr().err


def test_adaptive_signals_measures_each_signal_and_base_calls_against_quality(checkpoint, tmp_path, capsys):
    out = tmp_path / "signals.json"
    code = script("adaptive_signals").main(["--recipe", "debug", "--shortcut", str(checkpoint), "--num-samples", "4",
                                            "--batch-size", "4", "--every", "4", "--thresholds", "0.1,0.3",
                                            "--c", "0.1", "--out", str(out)])
    assert code == 0
    got = json.loads(out.read_text())
    assert got["steps_measured"] == 4 * 6  # 8 steps, anchors at 0 and 4
    for figures in got["signals"].values():
        assert 0 <= figures["auc_rel_error"] <= 1 and set(figures) == {
            "auc_rel_error", "spearman_rel_error", "auc_token_error", "spearman_token_error"}
    calls = got["base_calls_vs_quality"]["change@0.3"]
    assert 1 <= calls["mean_base_calls"] <= 8 and sum(b["samples"] for b in calls["by_base_calls"].values()) == 4
    assert calls["ceiling"] > 0
    assert "change: auc_rel_error=" in capsys.readouterr().out


def test_auc_counts_ties_as_half():
    signals = script("adaptive_signals")
    assert signals.auc(torch.tensor([0.1, 0.4, 0.35, 0.8]).numpy(), torch.tensor([False, False, True, True]).numpy()) == 0.75
    assert signals.auc(torch.tensor([1.0, 1.0]).numpy(), torch.tensor([True, False]).numpy()) == 0.5


def test_select_adaptive_chooses_only_rows_as_good_as_the_reference():
    """A row worse than vanilla-N lists vanilla-N among the vanilla runs as good as it; only
    `matches_reference` says the row is as good as vanilla-N."""
    def row(method, base, acc, matches):
        return {"method": method, "label": f"{method} {base}", "budget": None, "knobs": {"threshold": base},
                "base_calls": base, "seconds_per_image": base, "quality": {"prompt_accuracy": acc},
                "matches_reference": matches, "as_good_vanilla": [16]}

    rows = [row("adaptive-shortcut", 3, 0.6, False), row("adaptive-shortcut", 5, 0.9, True),
            row("adaptive-shortcut", 7, 0.95, True), row("adaptive", 10, 0.8, False), row("adaptive", 12, 0.85, False)]
    chosen = script("select_adaptive").choose(rows, "base_calls", lambda r: r["quality"]["prompt_accuracy"])
    assert chosen["adaptive-shortcut"]["entry"] == "adaptive-shortcut@threshold=5" and chosen["adaptive-shortcut"]["reached_target"]
    assert chosen["adaptive"]["entry"] == "adaptive@threshold=12" and not chosen["adaptive"]["reached_target"]
