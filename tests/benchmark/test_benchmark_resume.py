"""bench keeps each finished configuration in --out/state as it finishes; the same command again
continues an interrupted bench (a real process killed with SIGKILL, an interrupt injected after the
k-th configuration, one inside the timing runs) and ends with an uninterrupted run's figures."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import migmcut.benchmark.run as lib
from migmcut.cli.main import app

runner = CliRunner()
PLAN = ["--recipe", "debug", "--device", "cpu", "--methods", "vanilla,cache", "--budgets", "2,4", "--num-samples", "4",
        "--batch-size", "2", "--repeats", "2"]


def bench(out, *extra):
    return runner.invoke(app, ["bench", *PLAN, "--out", str(out), *extra])


def figures(out) -> dict:
    """What does not depend on the machine's speed: every row's quality, interval, calls and as-good vanilla."""
    rows = json.loads((Path(out) / "bench.json").read_text())["rows"]
    keep = ("method", "steps", "budget", "base_calls", "shortcut_calls", "partial_calls", "full_steps", "quality",
            "interval", "matches_reference", "as_good_vanilla")
    return {r["label"]: {k: r.get(k) for k in keep} for r in rows}


def kept(out) -> list[str]:
    return sorted(p.name for p in (Path(out) / "state").glob("*.json") if p.name not in ("plan.json", "timing.json"))


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """An uninterrupted run: the figures every continued run must end with."""
    out = tmp_path_factory.mktemp("whole") / "b"
    res = bench(out, "--json")
    assert res.exit_code == 0, res.output
    return out, figures(out)


@pytest.fixture
def counted(monkeypatch):
    """The configurations sampled, by label, in this process."""
    real, labels = lib.generate_images, []

    def counting(base, plan, cfg, shortcut, on_batch=None):
        labels.append(cfg.label)
        return real(base, plan, cfg, shortcut, on_batch)

    monkeypatch.setattr(lib, "generate_images", counting)
    return labels


def test_an_interrupt_after_the_kth_configuration_keeps_them_and_a_rerun_samples_only_the_rest(whole, tmp_path,
                                                                                              monkeypatch):
    _, expected = whole
    out = tmp_path / "b"
    real, calls = lib.generate_images, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the third configuration is in flight
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(lib, "generate_images", interrupted)
    res = bench(out)
    assert res.exit_code == 130, res.output
    assert kept(out) == ["vanilla-2.json", "vanilla-8.json"] and not (out / "bench.json").exists()
    monkeypatch.setattr(lib, "generate_images", real)

    labels = []
    monkeypatch.setattr(lib, "generate_images", lambda b, p, cfg, *a, **k: labels.append(cfg.label) or real(b, p, cfg, *a, **k))
    res = bench(out, "--json")
    assert res.exit_code == 0, res.output
    assert "continuing the bench" in res.stderr and "2 finished configuration(s) kept" in res.stderr
    assert "vanilla-8" not in labels and "vanilla-2" not in labels and len(labels) == len(expected) - 2
    assert figures(out) == expected
    assert json.loads(res.stdout)["rows"] == json.loads((out / "bench.json").read_text())["rows"]


def test_a_process_killed_mid_run_loses_at_most_the_configuration_in_flight(whole, tmp_path, counted):
    _, expected = whole
    out = tmp_path / "b"
    # the real command, slowed after each configuration so that the kill lands mid-run
    code = ("import sys, time\n"
            "import migmcut.benchmark.run as lib\n"
            "real = lib.generate_images\n"
            "def slow(*a, **k):\n"
            "    r = real(*a, **k)\n"
            "    time.sleep(1.0)\n"
            "    return r\n"
            "lib.generate_images = slow\n"
            "from migmcut.cli.main import app\n"
            f"sys.argv = ['migmcut', 'bench', *{PLAN!r}, '--out', {str(out)!r}]\n"
            "app()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 240
    while not (out / "state").is_dir() or not kept(out):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no configuration finished in time"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    before = kept(out)
    assert before and not (out / "bench.json").exists()
    assert not list(out.rglob(".*.tmp"))  # nothing half-written under its own name or a temporary one
    res = bench(out)
    assert res.exit_code == 0, res.output
    assert not {lib.BenchState._slug(label) + ".json" for label in counted} & set(before)  # only the missing ones
    assert len(counted) == len(expected) - len(before)
    assert figures(out) == expected


def test_an_interrupt_in_the_timing_runs_keeps_the_timings_made(whole, tmp_path, monkeypatch):
    _, expected = whole
    out = tmp_path / "b"
    real, saved = lib.BenchState.save_timing, []

    def interrupted(self, label, seconds):
        real(self, label, seconds)
        saved.append((label, seconds))
        if len(saved) == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(lib.BenchState, "save_timing", interrupted)
    assert bench(out).exit_code == 130
    monkeypatch.setattr(lib.BenchState, "save_timing", real)
    timing = json.loads((out / "state" / "timing.json").read_text())["repeats"]
    assert sum(len(v) for v in timing.values()) == 4
    res = bench(out)
    assert res.exit_code == 0, res.output
    after = json.loads((out / "state" / "timing.json").read_text())["repeats"]
    assert set(after) == set(expected) and all(len(v) == 2 for v in after.values())
    assert all(after[label][: len(v)] == v for label, v in timing.items())  # kept, not measured again
    assert figures(out) == expected


def test_another_plan_in_the_same_out_is_refused_unless_overwrite(whole, tmp_path):
    import shutil

    out = Path(shutil.copytree(whole[0], tmp_path / "b"))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    res = runner.invoke(app, ["bench", *PLAN[:-1], "3", "--out", str(out)])  # --repeats 3: another plan
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "another plan" in lines[0] and "repeats" in lines[0] and "--overwrite" in lines[0]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # untouched
    res = runner.invoke(app, ["bench", *PLAN[:-1], "3", "--out", str(out), "--overwrite", "--json"])
    assert res.exit_code == 0, res.output
    timing = json.loads((out / "state" / "timing.json").read_text())["repeats"]
    assert all(len(v) == 3 for v in timing.values())


def test_results_without_a_plan_are_not_replaced_silently(tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    (out / "bench.json").write_text("{}")
    res = bench(out)
    assert res.exit_code == 2 and "bench.json" in res.stderr and "--overwrite" in res.stderr, res.output
    assert (out / "bench.json").read_text() == "{}" and not (out / "state").exists()
    other = tmp_path / "c"
    (other / "state").mkdir(parents=True)
    (other / "state" / "vanilla-8.json").write_text("{}")  # kept figures of no known plan: never taken as ours
    res = bench(other)
    assert res.exit_code == 2 and "state/vanilla-8.json" in res.stderr, res.output


def test_a_second_bench_on_the_same_out_is_refused_while_the_first_runs(tmp_path):
    from migmcut.files import dir_lock

    out = tmp_path / "b"
    with dir_lock(out, "held by the test"):
        res = bench(out)
    assert res.exit_code == 2 and "another bench is writing there" in res.stderr, res.output


@pytest.mark.parametrize("args", [
    ["--methods", "vanilla,magic"],
    ["--budgets", "99"],
    ["--metrics", "nope"],
    ["--prompts", "/nonexistent/prompts.txt"],
    ["--prompts", "bench-set", "--set", "sampler.stepz=1"],
    ["--methods", "vanilla,shortcut"],  # no shortcut checkpoint in the debug recipe
])
def test_refused_input_creates_no_out_directory(tmp_path, args):
    out = tmp_path / "a" / "b"
    res = runner.invoke(app, ["bench", "--recipe", "debug", "--device", "cpu", "--num-samples", "2", "--out",
                              str(out), *args])
    assert res.exit_code == 2, res.output
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "a").exists()


def test_progress_lines_go_to_stderr_off_a_terminal_also_with_json(tmp_path):
    res = runner.invoke(app, ["bench", *PLAN, "--out", str(tmp_path / "b"), "--json"])
    assert res.exit_code == 0, res.output
    lines = res.stderr.splitlines()
    assert any(line.startswith("sampling vanilla-8: ") for line in lines), res.stderr
    assert any(line.startswith("sampling cache-8/2: ") for line in lines) and lines[-1].startswith("timing: ")
    assert res.stdout.count("\n") == 1 and json.loads(res.stdout)["rows"]
