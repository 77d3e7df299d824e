"""Every command's numeric options at their bounds, and no run-time path writing under the installed package."""

import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

import migmcut
from migmcut.errors import BATCH_MAX, COUNT_MAX, SEED_MAX, check_range
from migmcut.cli.main import app
from migmcut.errors import UserError, quote
from migmcut.recipe import load_recipe

runner = CliRunner()
COMMON = ["--recipe", "debug", "--device", "cpu"]
COMMANDS = {
    "record": lambda t: ["record", *COMMON, "--out", str(t / "o")],
    "train": lambda t: ["train", *COMMON, "--store", str(t / "store"), "--out", str(t / "o")],
    "generate": lambda t: ["generate", *COMMON, "--prompt", "a large red circle", "--out", str(t / "o")],
    "bench": lambda t: ["bench", *COMMON, "--methods", "vanilla", "--out", str(t / "o")],
}
# (command, option, lowest valid, highest valid)
OPTIONS = [
    ("record", "--num", 1, COUNT_MAX), ("record", "--batch-size", 1, BATCH_MAX), ("record", "--steps", 1, COUNT_MAX),
    ("record", "--block-size", 1, BATCH_MAX), ("record", "--seed", 0, SEED_MAX),
    ("train", "--max-steps", 1, COUNT_MAX), ("train", "--batch-size", 1, BATCH_MAX), ("train", "--workers", 0, 256),
    ("train", "--seed", 0, SEED_MAX), ("train", "--lr", 0, 10),
    ("generate", "--steps", 1, COUNT_MAX), ("generate", "--budget", 1, COUNT_MAX),
    ("generate", "--num-images", 1, COUNT_MAX), ("generate", "--batch-size", 1, BATCH_MAX),
    ("generate", "--seed", 0, SEED_MAX),
    ("bench", "--batch-size", 1, BATCH_MAX), ("bench", "--repeats", 1, 1000), ("bench", "--num-samples", 1, COUNT_MAX),
    ("bench", "--seed", 0, SEED_MAX),
]


@pytest.mark.parametrize("command, option, low, high", OPTIONS)
@pytest.mark.parametrize("side", ["below", "above"])
def test_a_numeric_option_out_of_range_is_one_line_naming_it_and_creates_nothing(tmp_path, command, option, low,
                                                                                 high, side):
    value = (low - 1 if isinstance(low, int) and option != "--lr" else low) if side == "below" else high + 1
    res = runner.invoke(app, [*COMMANDS[command](tmp_path), option, str(value)])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{option} must be" in lines[0] and str(value) in lines[0], res.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("value, ok", [(1, True), (5, True), (0, False), (6, False), (float("nan"), False)])
def test_check_range_takes_both_bounds_and_refuses_nan(value, ok):
    if ok:
        check_range("x", value, 1, 5)
    else:
        with pytest.raises(UserError, match=r"^x must be >= 1 and <= 5"):
            check_range("x", value, 1, 5)


def test_quoted_input_is_shortened():
    assert quote("a" * 10_000) == repr("a" * 59 + "…") and quote("short") == "'short'"


def test_a_long_prompt_is_quoted_short_in_the_message(tmp_path):
    prompt = "a tiny " + "x" * 10_000
    res = runner.invoke(app, ["generate", *COMMON, "--prompt", prompt, "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert len(res.stderr) < 400 and "…" in res.stderr, res.stderr[:300]


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def test_no_command_writes_under_the_installed_package(tmp_path):
    package = Path(migmcut.__file__).resolve().parent
    before = _snapshot(package)
    store, ck = tmp_path / "store", tmp_path / "ck"
    runs = [
        (0, ["record", *COMMON, "--out", str(store), "--num", "8", "--json"]),
        (0, ["store", "info", str(store)]),
        (0, ["store", "verify", str(store), "--repair"]),
        (0, ["train", *COMMON, "--store", str(store), "--out", str(ck), "--max-steps", "3", "--json"]),
        (0, ["generate", *COMMON, "--prompt", "a large red circle", "--shortcut", str(ck), "--budget", "2",
             "--out", str(tmp_path / "g")]),
        (0, ["generate", "--device", "cpu", "--prompt", "a large red circle", "--out", str(tmp_path / "g2")]),
        (0, ["bench", *COMMON, "--methods", "vanilla", "--budgets", "2", "--num-samples", "2", "--batch-size", "2",
             "--repeats", "1", "--out", str(tmp_path / "b")]),
        (0, ["schedule", "search", *COMMON, "--shortcut", str(ck), "--store", str(store), "--budgets", "2"]),
        (2, ["schedule", "search", "--device", "cpu", "--store", str(store), "--budgets", "4"]),
    ]
    for code, args in runs:
        res = runner.invoke(app, args)
        assert res.exit_code == code, (args, res.output)
    assert "shipped shortcut, which is never written" in res.stderr and "--shortcut DIR" in res.stderr
    assert _snapshot(package) == before


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    store, ck = root / "store", root / "ck"
    assert runner.invoke(app, ["record", *COMMON, "--out", str(store), "--num", "8", "--json"]).exit_code == 0
    assert runner.invoke(app, ["train", *COMMON, "--store", str(store), "--out", str(ck), "--max-steps", "3",
                               "--json"]).exit_code == 0
    return store, ck


def _full_disk(*args, **kwargs):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("target, args", [
    ("migmcut.benchmark.state.atomic_write_bytes", lambda s, ck, t: ["bench", *COMMON, "--methods", "vanilla", "--budgets", "2",
                                                "--num-samples", "2", "--batch-size", "2", "--repeats", "1",
                                                "--out", str(t / "b")]),
    ("pathlib.Path.write_text", lambda s, ck, t: ["schedule", "search", *COMMON, "--shortcut", str(ck), "--store",
                                                  str(s), "--budgets", "2"]),
    ("migmcut.store.inspect.open_group", lambda s, ck, t: ["store", "verify", str(s), "--repair"]),
])
def test_a_full_disk_in_the_other_writing_commands_is_one_line_exit_2(trained, tmp_path, monkeypatch, target, args):
    store, ck = trained
    if "verify" in args(store, ck, tmp_path):  # something to repair
        import shutil

        store = Path(shutil.copytree(store, tmp_path / "s"))
        next(p for p in (store / "features" / "c").rglob("*") if p.is_file()).write_bytes(b"damage")
    monkeypatch.setattr(target, _full_disk)
    res = runner.invoke(app, args(store, ck, tmp_path))
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "no space left" in lines[0], res.output
    assert not list(ck.glob(".*.tmp"))


TINY = load_recipe("tiny-shapes")  # the help texts quote its values: they must stay true


@pytest.mark.parametrize("command, option, default", [
    ("generate", "--method", "default: shortcut when the recipe has a shortcut checkpoint"),
    ("generate", "--budget", f"default: the recipe's shortcut.budget, {TINY.shortcut.budget} on tiny-shapes"),
    ("bench", "--budgets", f"default: the recipe's bench.budgets, {','.join(map(str, TINY.bench.budgets))} on tiny-shapes"),
    ("bench", "--num-samples", f"default: the recipe's bench.num_samples, {TINY.bench.num_samples} on tiny-shapes"),
])
def test_help_shows_the_recipe_derived_defaults(command, option, default):
    res = runner.invoke(app, [command, "--help"])
    assert res.exit_code == 0
    text = " ".join(res.stdout.replace("│", " ").split())  # the help cell, wrapped over rows, as one line
    assert default in text.split(f" {option} ", 1)[1], text
