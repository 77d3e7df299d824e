"""`train` at its boundaries: an incomplete store, input refused before anything is created, and
SIGINT / SIGTERM keeping the work done (a resumable checkpoint exactly where it stopped)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import zarr
from typer.testing import CliRunner

import migmcut
from migmcut.cli.main import app
from migmcut.errors import Interrupted, StoreError
from migmcut.shortcut import load_shortcut

runner = CliRunner()
COMMON = ["--recipe", "debug", "--device", "cpu"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "s"
    res = runner.invoke(app, ["record", *COMMON, "--out", str(path), "-n", "12", "--block-size", "4", "--json"])
    assert res.exit_code == 0, res.output
    return path


@pytest.fixture(scope="module")
def incomplete(store, tmp_path_factory):
    """The store as it is while still being recorded: its last block (8-11) not complete yet."""
    path = tmp_path_factory.mktemp("incomplete") / "s"
    shutil.copytree(store, path)
    zarr.open_group(str(path), mode="r+")["complete"][8:12] = False
    return path


def train(*args):
    return runner.invoke(app, ["train", *COMMON, *args])


def _one_line(res, *words):
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and all(w in lines[0] for w in words), res.stderr
    assert "Traceback" not in res.output and res.stdout == ""


# -- an incomplete store ---------------------------------------------------------------------------
def test_an_incomplete_store_is_refused_unless_allowed(incomplete, tmp_path):
    res = train("--store", str(incomplete), "--out", str(tmp_path / "o"), "--max-steps", "2")
    _one_line(res, "only 8 of its 12 trajectories are complete", "--allow-incomplete", "migmcut record")
    assert not (tmp_path / "o").exists()
    with pytest.raises(StoreError, match=r"pass allow_incomplete=True to train on the 8"):
        migmcut.train("debug", str(incomplete), tmp_path / "o", max_steps=2, device="cpu")


def test_allowed_it_trains_on_the_complete_ones_and_says_how_many(incomplete, tmp_path):
    res = train("--store", str(incomplete), "--out", str(tmp_path / "o"), "--max-steps", "2", "--allow-incomplete",
                "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert (out["trajectories"], out["store_trajectories"]) == (8, 12)
    meta = json.loads((tmp_path / "o" / "config.json").read_text())
    assert meta["train_trajectories"] + meta["val_trajectories"] == 8 and meta["store_trajectories"] == 12
    human = train("--store", str(incomplete), "--out", str(tmp_path / "h"), "--max-steps", "2", "--allow-incomplete")
    assert human.exit_code == 0 and "on 8 of the store's 12 trajectories" in human.stdout, human.output


def test_a_complete_store_reports_all_its_trajectories(store, tmp_path):
    res = train("--store", str(store), "--out", str(tmp_path / "o"), "--max-steps", "2", "--json")
    assert res.exit_code == 0, res.output
    assert (json.loads(res.stdout)["trajectories"], json.loads(res.stdout)["store_trajectories"]) == (12, 12)
    human = train("--store", str(store), "--out", str(tmp_path / "h"), "--max-steps", "2")
    assert " of the store's " not in human.stdout


# -- nothing created before the input is validated -------------------------------------------------
@pytest.mark.parametrize("make_args, message", [
    (lambda s, i, t: ["--store", str(t / "absent")], "no such store"),
    (lambda s, i, t: ["--store", str(s), "--set", "base.init_seed=7"], "recorded with base"),
    (lambda s, i, t: ["--store", str(s), "--set", "train.unroll=99"], "train.unroll must be below"),
    (lambda s, i, t: ["--store", str(i)], "--allow-incomplete"),
    (lambda s, i, t: ["--store", str(s), "--init", "builtin:nope"], "--init builtin:nope"),
    (lambda s, i, t: ["--store", str(s), "--init", str(t / "nothing")], "is not a shortcut checkpoint"),
    (lambda s, i, t: ["--store", str(s), "--resume"], "no trainer state"),
    (lambda s, i, t: ["--store", str(s), "--set", "train.val_fraction=0.99"], "too few trajectories"),
])
@pytest.mark.parametrize("depth", ["o", "a/b/o"])
def test_refused_input_creates_no_out_directory(store, incomplete, tmp_path, make_args, message, depth):
    res = train(*make_args(store, incomplete, tmp_path), "--out", str(tmp_path / depth), "--max-steps", "2")
    _one_line(res, message)
    assert not (tmp_path / depth.split("/")[0]).exists()


def test_an_out_that_cannot_be_a_directory_is_refused_before_anything(store, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _one_line(train("--store", str(store), "--out", str(blocker), "--max-steps", "2"), "not a directory")
    _one_line(train("--store", str(store), "--out", str(blocker / "o"), "--max-steps", "2"), "cannot write there")
    assert blocker.read_text() == "x"


def test_an_out_created_for_a_run_that_fails_later_is_removed_again(store, tmp_path):
    """A damaged trajectory is found while training: the directory the run made (still empty) goes."""
    damaged = tmp_path / "s"
    shutil.copytree(store, damaged)
    for shard in (damaged / "features" / "c").glob("*/0/0/0/0"):
        data = shard.read_bytes()
        shard.write_bytes(data[:50] + bytes([data[50] ^ 0xFF]) + data[51:])
    _one_line(train("--store", str(damaged), "--out", str(tmp_path / "o"), "--max-steps", "2",
                    "--set", "train.checkpoint_every=1000"), "is damaged")
    assert not (tmp_path / "o").exists()


# -- signals ---------------------------------------------------------------------------------------
def _raise_at(step, *signals):
    def log(at, stats):
        if at == step:
            for sig in signals:
                signal.raise_signal(sig)
    return log


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_in_the_library_saves_where_it_stopped_and_resume_goes_on_from_there(store, tmp_path, sig, debug_base):
    out = tmp_path / "ck"

    def unhandled(signum, frame):  # what the test sees if train does not take the signal (not: pytest killed)
        raise RuntimeError(f"{signal.Signals(signum).name} reached the caller")

    before = signal.signal(sig, unhandled)
    try:
        with pytest.raises(Interrupted) as err:
            migmcut.train("debug", str(store), out, max_steps=50, device="cpu", log=_raise_at(3, sig))
        assert signal.getsignal(sig) is unhandled  # the handlers are back
    finally:
        signal.signal(sig, before)
    assert isinstance(err.value, KeyboardInterrupt) and err.value.signum == sig and err.value.exit_code == 128 + sig
    assert f"interrupted by {sig.name} at step 3 of 50" in str(err.value) and "resume=True" in str(err.value)
    assert torch.load(out / "trainer.pt", weights_only=True)["step"] == 3  # not the last periodic checkpoint (0)
    _, meta = load_shortcut(out, debug_base)
    assert meta["step"] == 3
    again = migmcut.train("debug", str(store), out, max_steps=5, device="cpu", resume=True)
    assert (again.start_step, again.steps) == (3, 5)


def test_a_second_signal_stops_at_once(store, tmp_path):
    with pytest.raises(KeyboardInterrupt) as err:
        migmcut.train("debug", str(store), tmp_path / "ck", max_steps=50, device="cpu",
                      log=_raise_at(3, signal.SIGTERM, signal.SIGINT))
    assert not isinstance(err.value, Interrupted)
    assert not (tmp_path / "ck" / "trainer.pt").exists()  # nothing saved on the way out


def _cli(*args):
    return [sys.executable, "-m", "migmcut.cli.main", *args]


@pytest.mark.slow
@pytest.mark.parametrize("sig, workers, group", [
    (signal.SIGINT, 0, False),
    (signal.SIGTERM, 0, False),
    (signal.SIGINT, 1, True),  # Ctrl-C in a terminal: the whole process group, DataLoader worker included
])
def test_a_signal_to_a_real_train_process_keeps_a_resumable_checkpoint(store, tmp_path, debug_base, sig, workers,
                                                                      group):
    out = tmp_path / "ck"
    args = ["train", *COMMON, "--store", str(store), "--out", str(out), "--workers", str(workers),
            "--set", "train.checkpoint_every=5", "--set", "train.val_every=100000"]
    env = {k: v for k, v in os.environ.items() if k != "MIGMCUT_DEBUG"} | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_cli(*args, "--max-steps", "100000"), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=group)
    try:
        deadline = time.monotonic() + 240
        while not (out / "trainer.pt").exists():  # the first periodic checkpoint: training runs
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
            time.sleep(0.1)
        time.sleep(0.5)
        os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    m = re.fullmatch(rf"interrupted by {sig.name} at step (\d+) of 100000: a resumable checkpoint is saved in "
                     rf"{re.escape(str(out))}; run the same command with --resume to continue", last)
    assert m and "Traceback" not in stderr and stdout == "", stderr[-2000:]
    stopped = int(m.group(1))
    assert torch.load(out / "trainer.pt", weights_only=True)["step"] == stopped
    assert load_shortcut(out, debug_base)[1]["step"] == stopped
    assert not list(out.glob(".*.tmp"))
    res = runner.invoke(app, [*args, "--max-steps", str(stopped + 3), "--resume"])
    assert res.exit_code == 0, res.output
    assert f"trained 3 steps (to step {stopped + 3})" in res.stdout, res.output
