import csv
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from migmcut.benchmark import configurations, pareto_front
from migmcut.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    store, ck = root / "store", root / "ck"
    res = runner.invoke(app, ["record", "--recipe", "debug", "--out", str(store), "--num", "12", "--json"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["train", "--recipe", "debug", "--device", "cpu", "--store", str(store), "--out", str(ck),
                              "--max-steps", "20", "--json"])
    assert res.exit_code == 0, res.output
    return store, ck


def bench(*args):
    return runner.invoke(app, ["bench", "--recipe", "debug", "--device", "cpu", "--repeats", "1", *args])


def search(*args):
    return runner.invoke(app, ["schedule", "search", "--recipe", "debug", "--device", "cpu", *args])


def test_bench_runs_every_configuration_and_writes_parseable_files(trained, tmp_path):
    _, ck = trained
    out = tmp_path / "b"
    methods = ["cache", "shortcut", "recap", "mlcache", "hybrid"]
    res = bench("--shortcut", str(ck), "--budgets", "2,4", "--num-samples", "4", "--batch-size", "4",
                "--methods", ",".join(["vanilla", *methods]), "--out", str(out), "--json")
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    rows = result["rows"]
    got = {(r["method"], r["steps"], r["budget"]): r for r in rows}
    vanilla = sorted(k[1] for k in got if k[0] == "vanilla")
    assert {8, 2, 4} <= set(vanilla)  # N and every budget, plus the step counts the front needed
    assert set(got) - {("vanilla", n, n) for n in vanilla} == {(m, 8, b) for m in methods for b in (2, 4)}
    assert [r["method"] for r in rows if r["budget"] == 4 and r["method"] != "vanilla"] == methods
    seconds = {n: got[("vanilla", n, n)]["seconds_per_image"] for n in vanilla}
    for (method, steps, budget), r in got.items():
        assert r["base_calls"] == budget == len(r["full_steps"] or range(steps))
        assert r["shortcut_calls"] == (steps - budget if method in ("shortcut", "hybrid") else 0)  # the hybrid runs it too
        assert r["partial_calls"] == (steps - budget if method in ("recap", "mlcache", "hybrid") else 0)
        if method != "vanilla":  # the row's measured cost in vanilla-8 steps, and each non-full step's share
            equivalents = r["seconds_per_image"] / (seconds[8] / 8)
            assert r["base_call_equivalents"] == pytest.approx(equivalents, rel=1e-2)
            assert r["step_cost"] == pytest.approx((equivalents - budget) / (steps - budget), rel=1e-2, abs=1e-3)
        assert r["seconds_per_image"] > 0 and r["speedup"] > 0
        assert {"prompt_accuracy", "fd"} <= set(r["quality"])
        assert ("bound" in r) == (method == "shortcut")
        for m in ("prompt_accuracy", "fd"):
            lo, hi = r["interval"][m]
            assert lo <= r["quality"][m] + 1e-9 and r["quality"][m] <= hi + 1e-9
        if method != "vanilla":  # judged against the fastest vanilla that is as good
            front = int(r["front_vanilla"].split("-")[1])
            if not r["front_beyond"]:  # the fastest of the vanilla runs that are as good
                assert front in r["as_good_vanilla"]
                assert seconds[front] == min(seconds[n] for n in r["as_good_vanilla"])
            if "ceiling" in r:  # the front speedup at vanilla-N's quality: against the vanilla matching vanilla-8
                ceiling = int(r["ceiling_vanilla"].split("-")[1])
                assert r["ceiling"] == pytest.approx(seconds[ceiling] / r["seconds_per_image"], rel=1e-3)
            assert r["front_speedup"] == pytest.approx(seconds[front] / r["seconds_per_image"], rel=1e-3)
    assert got[("vanilla", 8, 8)]["speedup"] == 1.0
    saved = json.loads((out / "bench.json").read_text())
    assert [r["label"] for r in saved["rows"]] == [r["label"] for r in rows]
    assert saved["timing"]["c"] > 0
    with open(out / "bench.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and float(table[0]["speedup"]) == 1.0
    assert {"front_vanilla", "front_speedup", "ceiling", "fd_lo", "fd_hi", "prompt_accuracy_lo", "partial_calls",
            "base_call_equivalents", "step_cost"} <= set(table[0])
    assert Image.open(out / "pareto.png").size[0] > 100
    assert torch.is_grad_enabled()  # the in-process command leaves global state alone


def test_bench_store_reference_searched_schedule_and_rollout_report(trained, tmp_path):
    store, ck = trained
    out = tmp_path / "b"
    res = bench("--shortcut", str(ck), "--store", str(store), "--budgets", "2", "--methods", "cache,shortcut",
                "--schedule", "both", "--out", str(out), "--json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["rows"]
    assert rows[0]["label"] == "vanilla-8" and rows[0]["images"] == "store" and rows[0]["speedup"] == 1.0
    assert [r["label"] for r in rows if r["method"] != "vanilla"] == ["cache-8/2", "shortcut-8/2", "shortcut-8/2 (searched)"]
    schedules = json.loads((ck / "schedules.json").read_text())["schedules"]["8"]["2"]
    assert rows[-1]["full_steps"] == schedules["full_steps"]
    report = json.loads((out / "rollout.json").read_text())
    assert len(report["shortcut"]["one_step"]["mse"]) == 7 and len(report["cache"]["k_step"]["top1"]) == 7
    assert Image.open(out / "rollout.png").size[0] > 100


def test_search_schedule_command_saves_schedules_no_worse_than_uniform(trained):
    store, ck = trained
    res = bench("--shortcut", str(ck), "--store", str(store), "--budgets", "2,3,4", "--search-schedule", "--json")
    assert res.exit_code == 0, res.output
    found = json.loads(res.stdout)["schedules"]
    assert [s["budget"] for s in found] == [2, 3, 4]
    for s in found:
        full = s["full_steps"]
        assert len(full) == s["budget"] and full[0] == 0 and all(a < b for a, b in zip(full, full[1:]))
        assert s["objective"] <= s["uniform"]["objective"] + 1e-9


def test_schedule_search_is_its_own_command_and_the_old_flag_its_deprecated_alias(trained, tmp_path):
    store, ck = trained
    found = {}
    for name, run in (("command", lambda c: search("--shortcut", c, "--store", str(store), "--budgets", "2,3", "--json")),
                      ("alias", lambda c: bench("--shortcut", c, "--store", str(store), "--budgets", "2,3",
                                                "--search-schedule", "--json"))):
        copy = fresh_copy(ck, tmp_path / name)
        res = run(copy)
        assert res.exit_code == 0, res.output
        notices = [line for line in res.stderr.splitlines() if "deprecated" in line]
        assert notices == (["--search-schedule is deprecated: use migmcut schedule search"] if name == "alias" else [])
        out = json.loads(res.stdout)
        assert out["file"] == str(Path(copy) / "schedules.json")
        found[name] = (out["schedules"], json.loads(Path(out["file"]).read_text())["schedules"])
    assert found["command"] == found["alias"] and [s["budget"] for s in found["command"][0]] == [2, 3]
    # bad input: one line, exit 2, as every command
    res = search("--shortcut", str(ck), "--store", str(store), "--budgets", "9")
    assert res.exit_code == 2 and res.stderr.strip() == "error: budget 9 must be between 1 and the step count (8)"
    res = search("--shortcut", str(ck), "--budgets", "2")
    assert res.exit_code == 2 and "--store" in res.stderr


def test_pareto_front_on_synthetic_points():
    xs = [1.0, 2.0, 3.0, 2.5, 0.5, 4.0]
    ys = [0.5, 0.7, 0.9, 0.6, 0.1, 0.9]
    assert pareto_front(xs, ys, higher_is_better=True) == [4, 0, 1, 2]
    # lower is better (fd): the front flips
    assert pareto_front(xs, ys, higher_is_better=False) == [4]
    assert pareto_front([1.0, 1.0], [0.2, 0.3]) == [1]


def test_configurations_plan():
    labels = [c.label for c in configurations(16, [4, 16], ["vanilla", "cache", "shortcut"])]
    assert labels == ["vanilla-16", "vanilla-4", "cache-16/4", "shortcut-16/4", "cache-16/16", "shortcut-16/16"]
    # the uniform placement follows the recipe's budget rounding, as generate's does
    half = {r: configurations(5, [2], ["cache"], rounding=r)[-1].full_steps for r in ("half-up", "half-even")}
    assert half == {"half-up": [0, 3], "half-even": [0, 2]}
    # recap and mlcache place full steps by their own rules; the hybrid takes the shortcut's searched placement
    plan = configurations(16, [8], ["recap", "mlcache", "hybrid"], "auto", {8: [0, 1, 2, 3, 5, 8, 11, 14]})
    assert [(c.label, c.full_steps) for c in plan[2:]] == [
        ("recap-16/8", [0, 2, 4, 6, 8, 10, 12, 14]), ("mlcache-16/8", [0, 1, 2, 3, 4, 5, 10, 15]),
        ("hybrid-16/8 (searched)", [0, 1, 2, 3, 5, 8, 11, 14])]
    # a method may name its own budgets; vanilla runs at every budget any method has
    plan = configurations(16, [4], ["vanilla", "cache", "shortcut:3/6", "mlcache:7"])
    assert [c.label for c in plan] == ["vanilla-16", "vanilla-3", "vanilla-4", "vanilla-6", "vanilla-7",
                                       "shortcut-16/3", "cache-16/4", "shortcut-16/6", "mlcache-16/7"]


def fresh_copy(ck, tmp):
    """The checkpoint without any searched schedules (other tests add some)."""
    import shutil

    dest = tmp / "ck-fresh"
    shutil.copytree(ck, dest, ignore=shutil.ignore_patterns("schedules.json"))
    return str(dest)


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda t, ck: ["--budgets", "0"], "budget 0"),
        (lambda t, ck: ["--budgets", "9"], "budget 9"),
        (lambda t, ck: ["--methods", "vanilla,turbo"], "unknown method 'turbo'"),
        (lambda t, ck: ["--metrics", "psnr"], "unknown metric 'psnr'"),
        (lambda t, ck: ["--prompts", str(t / "absent.txt")], "no such file"),
        (lambda t, ck: ["--prompts", str(t / "empty.txt")], "holds no prompt"),
        (lambda t, ck: ["--prompts", str(t / "foreign.txt")], "metric prompt_accuracy scores tiny-shapes captions only"),
        (lambda t, ck: ["--set", "base.init_seed=7"], "trained for base"),
        (lambda t, ck: ["--out", str(t / "file")], "cannot write there"),
        (lambda t, ck: ["--schedule", "searched", "--shortcut", fresh_copy(ck, t)], "no searched schedule"),
        (lambda t, ck: ["--methods", "cache", "--steps", "-1"], "--steps must be >= 1"),
        (lambda t, ck: ["--vanilla-steps", "0,4"], "--vanilla-steps 0 must be between 1 and the step count (8)"),
        (lambda t, ck: ["--vanilla-steps", "9"], "--vanilla-steps 9 must be between 1 and the step count (8)"),
        (lambda t, ck: ["--vanilla-steps", "4,x"], "--vanilla-steps '4,x': expected comma-separated integers"),
        (lambda t, ck: ["--vanilla-steps", "2.5"], "expected comma-separated integers"),
        (lambda t, ck: ["--methods", "cache,shortcut:2/x"], "expected NAME or NAME:B1/B2"),
        (lambda t, ck: ["--methods", "shortcut:9"], "budget 9 must be between 1 and the step count (8)"),
        (lambda t, ck: ["--methods", "vanilla:4"], "vanilla takes no budgets"),
        (lambda t, ck: ["--methods", "mlcache", "--budgets", "1"], "--budgets 1: mlcache with refresh interval 5 needs a budget between 2"),
        (lambda t, ck: ["--methods", "recap", "--set", "recap.local=-1"], "recap: local must be >= 1"),
        (lambda t, ck: ["--methods", "mlcache", "--set", "mlcache.cache_ratio=1.1"], "mlcache: cache_ratio must be in (0, 1]"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(trained, tmp_path, make_args, message):
    _, ck = trained
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "foreign.txt").write_text("a large red circle\na red circle\n")
    (tmp_path / "file").write_text("not a directory")
    out = tmp_path / "out"
    args = ["--shortcut", str(ck), "--num-samples", "2", "--out", str(out), *make_args(tmp_path, ck)]
    if args.count("--shortcut") == 2:
        del args[:2]
    res = bench(*args)
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert not (out / "bench.json").exists()


def test_generate_uses_a_searched_schedule_and_refuses_a_missing_one(trained, tmp_path):
    store, ck = trained
    assert search("--shortcut", str(ck), "--store", str(store), "--budgets", "3").exit_code == 0
    gen = ["generate", "--recipe", "debug", "--device", "cpu", "--prompt", "a large red circle", "--shortcut", str(ck),
           "--out", str(tmp_path / "g"), "--schedule", "searched", "--json"]
    from migmcut.placement import budget_schedule, load_schedule

    searched = load_schedule(ck, 8, 3)
    assert searched != budget_schedule(8, 3)  # else the checks below could not tell them apart
    res = runner.invoke(app, [*gen, "--budget", "3"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["base_calls"] == 3 and json.loads(res.stdout)["full_steps"] == searched
    res = runner.invoke(app, [*gen, "--budget", "5"])
    assert res.exit_code == 2 and "no searched schedule for N=8, B=5" in res.stderr
    # the default (auto) takes the searched schedule where one is saved, the uniform one elsewhere
    auto = [a for a in gen if a not in ("--schedule", "searched")]
    assert json.loads(runner.invoke(app, [*auto, "--budget", "3"]).stdout)["full_steps"] == searched
    assert json.loads(runner.invoke(app, [*auto, "--budget", "5"]).stdout)["full_steps"] == budget_schedule(8, 5)
    uniform = runner.invoke(app, [*auto, "--budget", "3", "--schedule", "uniform"])
    assert json.loads(uniform.stdout)["full_steps"] == budget_schedule(8, 3)
    # an explicit --schedule searched places the cache's full steps too; auto leaves the cache uniform
    cache = runner.invoke(app, [*gen, "--budget", "3", "--method", "cache"])
    assert json.loads(cache.stdout)["full_steps"] == searched
    cache = runner.invoke(app, [*auto, "--budget", "3", "--method", "cache"])
    assert json.loads(cache.stdout)["full_steps"] == budget_schedule(8, 3)


def test_explicit_vanilla_steps_are_exactly_the_front_and_the_default_schedule_is_generates(trained, tmp_path):
    store, ck = trained
    assert search("--shortcut", str(ck), "--store", str(store), "--budgets", "3").exit_code == 0
    from migmcut.placement import load_schedule

    res = bench("--shortcut", str(ck), "--budgets", "3", "--methods", "shortcut", "--vanilla-steps", "5,3",
                "--num-samples", "4", "--batch-size", "4", "--out", str(tmp_path / "b"), "--json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["rows"]
    assert [r["label"] for r in rows] == ["vanilla-8", "vanilla-3", "vanilla-5", "shortcut-8/3 (searched)"]
    # bench's default schedule is generate's: the searched placement saved beside the shortcut
    assert rows[-1]["full_steps"] == load_schedule(ck, 8, 3)


def test_plot_labels_do_not_overlap():
    from migmcut.benchmark import BenchResult, label_box, pareto_figure

    rows = []
    for i in range(12):  # points crowded into one corner, as real bench runs put them
        rows.append({"label": f"shortcut-16/{i} (searched)", "method": "shortcut", "schedule": "searched",
                     "seconds_per_image": 0.10 + 0.002 * i, "quality": {"prompt_accuracy": 0.80 + 0.001 * i, "fd": 500 + i},
                     "interval": {"prompt_accuracy": [0.75, 0.85], "fd": [450, 560]}})
    rows += [{"label": f"vanilla-{n}", "method": "vanilla", "seconds_per_image": 0.03 * n,
              "quality": {"prompt_accuracy": 0.5 + 0.03 * n, "fd": 1500 - 60 * n}, "interval": {}} for n in range(2, 17)]
    result = BenchResult(rows, "prompt_accuracy", True, higher={"prompt_accuracy": True, "fd": False})
    fig, labels = pareto_figure(result)
    renderer = fig.canvas.get_renderer()
    boxes = [label_box(a, renderer) for a in labels]
    assert len(labels) == 2 * len(rows)
    per_panel = len(rows)
    for panel in (boxes[:per_panel], boxes[per_panel:]):
        assert not any(a.overlaps(b) for i, a in enumerate(panel) for b in panel[i + 1 :])
