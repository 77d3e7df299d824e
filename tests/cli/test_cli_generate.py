import json
import os

import pytest
from PIL import Image
from typer.testing import CliRunner

from migmcut.cli.main import app
from migmcut.recipe import load_recipe

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, ["generate", "--recipe", "debug", "--device", "cpu", *args])


def test_generate_writes_pngs_and_reports_json(tmp_path):
    out = tmp_path / "imgs"
    res = invoke("--prompt", "a large red circle", "--prompt", "a small blue square", "-n", "2",
                 "--out", str(out), "--json")
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert len(payload["images"]) == 4
    assert payload["method"] == "vanilla" and payload["steps"] == 8
    assert payload["base_calls"] == 8 and payload["shortcut_calls"] == 0
    for path in payload["images"]:
        assert Image.open(path).size == (64, 64)
    assert sorted(os.listdir(out)) == sorted(os.path.basename(p) for p in payload["images"])


def test_steps_and_seed_change_the_images(tmp_path):
    a = invoke("--prompt", "a large red circle", "--out", str(tmp_path / "a"), "--json", "--seed", "1")
    b = invoke("--prompt", "a large red circle", "--out", str(tmp_path / "b"), "--json", "--seed", "1")
    c = invoke("--prompt", "a large red circle", "--out", str(tmp_path / "c"), "--json", "--seed", "2",
               "--steps", "4")
    pa, pb, pc = (json.loads(r.stdout)["images"][0] for r in (a, b, c))
    assert Image.open(pa).tobytes() == Image.open(pb).tobytes()
    assert Image.open(pa).tobytes() != Image.open(pc).tobytes()
    assert json.loads(c.stdout)["steps"] == 4


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompt", ""], "empty prompt"),
        (["--prompt", "a red circle", "--steps", "0"], "--steps must be >= 1"),
        (["--prompt", "a red circle", "--budget", "99"], "--budget 99"),
        (["--prompt", "a red circle", "--budget", "0"], "--budget must be >= 1"),
        (["--prompt", "a red circle", "--method", "shortcut", "--budget", "2"], "needs a shortcut checkpoint"),
        (["--prompt", "a red circle", "--method", "cache"], "needs --budget"),
        (["--prompt", "a red circle", "--shortcut", "/nonexistent", "--budget", "2"], "not a shortcut checkpoint"),
        (["--prompt", "a red circle", "--method", "magic"], "--method 'magic'"),
        (["--prompt", "a red circle", "--recipe", "nope"], "unknown recipe"),
        (["--prompt", "a red circle", "--set", "sampler.stepz=3"], "unknown key 'sampler.stepz'"),
        (["--prompt", "a tiny red circle"], "does not know: 'tiny'"),
        ([], "nothing to generate"),
        (["--class", "3"], "text-conditioned"),
        (["--prompt", "a red circle", "-n", "0"], "--num-images"),
        (["--prompt", "a red circle", "--method", "recap"], "needs --budget"),
        (["--prompt", "a red circle", "--method", "hybrid", "--budget", "2"], "needs a shortcut checkpoint"),
        (["--prompt", "a red circle", "--method", "mlcache", "--budget", "1"], "mlcache with refresh interval 5 needs a budget between 2"),
        (["--prompt", "a red circle", "--method", "recap", "--budget", "2", "--set", "recap.local=1"], "needs a budget between 4"),
        (["--prompt", "a red circle", "--method", "mlcache", "--set", "mlcache.cache_ratio=0"], "mlcache: cache_ratio must be in (0, 1]"),
        (["--prompt", "a red circle", "--method", "mlcache", "--set", "mlcache.warmup_ratio=1.5"], "mlcache: warmup_ratio must be in (0, 1]"),
        (["--prompt", "a red circle", "--method", "mlcache", "--set", "mlcache.refresh_interval=0"], "mlcache: refresh_interval must be >= 1"),
        (["--prompt", "a red circle", "--method", "recap", "--budget", "2", "--set", "recap.local=0"], "recap: local must be >= 1"),
        (["--prompt", "a red circle", "--set", "hybrid.candidates=0.5"], "hybrid: candidates must be between 1 and 64"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "out"
    res = invoke("--out", str(out), *args)
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert "Traceback" not in res.output
    assert res.stdout == ""
    assert not out.exists() or not any(out.iterdir())


def test_unwritable_out_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    res = invoke("--prompt", "a large red circle", "--out", str(blocker / "sub"))
    assert res.exit_code == 2
    assert "--out" in res.stderr and "cannot write" in res.stderr


def test_malformed_recipe_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbase: {kind: tiny-shapes\n")
    res = invoke("--prompt", "a red circle", "--recipe", str(bad))
    assert res.exit_code == 2 and "malformed YAML" in res.stderr


def test_cache_method_reports_its_base_calls(tmp_path):
    res = invoke("--prompt", "a large red circle", "--method", "cache", "--budget", "3",
                 "--out", str(tmp_path), "--json")
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert payload["method"] == "cache" and payload["budget"] == 3
    assert payload["base_calls"] == 3 and payload["shortcut_calls"] == 0


def test_shortcut_for_another_base_is_refused(tmp_path):
    from migmcut.shortcut import Shortcut, ShortcutConfig

    Shortcut(ShortcutConfig(feature_dim=32, heads=2)).save(tmp_path / "ck", {"base_fingerprint": "someone-else"})
    res = invoke("--prompt", "a large red circle", "--shortcut", str(tmp_path / "ck"), "--budget", "3",
                 "--out", str(tmp_path / "o"))
    assert res.exit_code == 2 and "trained for base someone-else" in res.stderr


def test_unexpected_errors_exit_1_with_the_traceback_only_under_debug(tmp_path, monkeypatch):
    import migmcut.generation

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(migmcut.generation, "generate", broken)
    monkeypatch.delenv("MIGMCUT_DEBUG", raising=False)
    args = ["generate", "--recipe", "debug", "--prompt", "a red circle", "--out", str(tmp_path)]
    quiet = runner.invoke(app, args)
    assert quiet.exit_code == 1 and "boom" in quiet.stderr and "Traceback" not in quiet.stderr
    loud = runner.invoke(app, ["--debug", *args])
    assert loud.exit_code == 1 and "Traceback" in loud.stderr
    monkeypatch.delenv("MIGMCUT_DEBUG", raising=False)
    assert runner.invoke(app, ["--version"]).stdout.startswith("migmcut ")


def test_each_batch_is_written_as_it_finishes_so_an_interrupt_keeps_them(tmp_path, monkeypatch):
    import migmcut.runner as lib  # the one batch loop

    real, calls = lib.sample, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(lib, "sample", interrupted)
    out = tmp_path / "imgs"
    res = invoke("--prompt", "a large red circle", "-n", "4", "--batch-size", "1", "--out", str(out))
    assert res.exit_code == 130, res.output
    assert sorted(os.listdir(out)) == ["0000-a-large-red-circle.png", "0001-a-large-red-circle.png"]


def test_a_full_disk_is_one_line_exit_2_and_leaves_no_tmp_file(tmp_path, monkeypatch):
    import errno

    def full(self, fp, *args, **kwargs):
        open(fp, "wb").write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    out = tmp_path / "imgs"
    res = invoke("--prompt", "a large red circle", "--out", str(out), "--json")
    assert res.exit_code == 2 and not res.stdout, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "no space left" in lines[0], res.stderr
    assert os.listdir(out) == []


def test_json_reports_loading_and_sampling_apart(tmp_path):
    res = invoke("--prompt", "a large red circle", "--out", str(tmp_path), "--json")
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert 0 < payload["sampling_seconds_per_image"] and 0 < payload["load_seconds"]
    assert payload["load_seconds"] + payload["sampling_seconds_per_image"] <= payload["seconds"]


def test_a_default_budget_that_does_not_fit_the_steps_says_so(tmp_path):
    res = runner.invoke(app, ["generate", "--device", "cpu", "--prompt", "a large red circle", "--steps", "3",
                              "--out", str(tmp_path)])
    assert res.exit_code == 2, res.output
    budget = load_recipe("tiny-shapes").shortcut.budget  # 6: above --steps 3
    assert f"recipe's default budget ({budget} full steps) does not fit --steps 3: pass --budget" in res.stderr


@pytest.mark.parametrize("method, budget, full, partial", [
    ("recap", 3, [0, 3, 6], 5),  # ReCAP with the fewest local steps that reach 3 full steps of 8: two per full step
    ("mlcache", None, [0, 1, 2, 7], 4),  # Lumina-DiMOO's rule at its defaults: warm-up int(8 * 0.3) = 2, refresh every 5
    ("mlcache", 3, [0, 1, 6], 5),  # the warm-up that gives 3
])
def test_partial_methods_run_from_the_command_line_and_report_their_calls(tmp_path, method, budget, full, partial):
    args = ["--prompt", "a large red circle", "--method", method, "--out", str(tmp_path / "o"), "--json"]
    res = invoke(*args, *(["--budget", str(budget)] if budget else []))
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert payload["full_steps"] == full and payload["base_calls"] == len(full)
    assert payload["partial_calls"] == partial and payload["shortcut_calls"] == 0
    assert Image.open(payload["images"][0]).size == (64, 64)


def test_mlcache_knobs_on_the_command_line_change_the_images(tmp_path):
    def image(*extra):
        res = invoke("--prompt", "a large red circle", "--method", "mlcache", "--budget", "3", "--out",
                     str(tmp_path / str(len(extra))), "--json", *extra)
        assert res.exit_code == 0, res.output
        return Image.open(json.loads(res.stdout)["images"][0]).tobytes()

    assert image() != image("--set", "mlcache.cache_ratio=0.2")


@pytest.mark.parametrize("method", ["recap", "mlcache", "hybrid"])
def test_a_base_without_partial_evaluation_is_refused_for_the_partial_methods(tmp_path, monkeypatch, method):
    from migmcut.base.tiny_shapes import TinyShapesBase

    monkeypatch.setattr(TinyShapesBase, "supports_partial", False)
    res = invoke("--prompt", "a red circle", "--method", method, "--budget", "2", "--shortcut", str(tmp_path),
                 "--out", str(tmp_path / "o"))
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "has no partial evaluation" in lines[0], res.stderr
    assert not any((tmp_path / "o").glob("*.png"))


def test_hybrid_reports_the_shortcut_calls_it_makes(tmp_path, debug_base, monkeypatch):
    """The hybrid runs the shortcut on every skipped step (then a partial evaluation): both counts are true."""
    import migmcut.shortcut as sc

    sc.Shortcut(sc.ShortcutConfig(feature_dim=debug_base.feature_dim, heads=2)).save(
        tmp_path / "ck", {"base_fingerprint": debug_base.fingerprint})
    real, runs = sc.Shortcut.forward, []

    def counted(self, *a, **k):  # the shortcut's real forward calls, one per batch and step
        runs.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(sc.Shortcut, "forward", counted)
    res = invoke("--prompt", "a large red circle", "--method", "hybrid", "--budget", "2", "--shortcut",
                 str(tmp_path / "ck"), "--out", str(tmp_path / "o"), "--json")
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert payload["base_calls"] == 2 and payload["shortcut_calls"] == 6 == len(runs)
    assert payload["partial_calls"] == 6
