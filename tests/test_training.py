import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from migmcut.cli.main import app
from migmcut.shortcut import load_shortcut

runner = CliRunner()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "s"
    res = runner.invoke(app, ["record", "--recipe", "debug", "--out", str(path), "--num", "12", "--json"])
    assert res.exit_code == 0, res.output
    return path


def train(*args):
    return runner.invoke(app, ["train", "--recipe", "debug", "--device", "cpu", *args])


def test_train_beats_the_cache_and_writes_a_loadable_checkpoint(store, tmp_path, debug_base):
    res = train("--store", str(store), "--out", str(tmp_path / "ck"), "--max-steps", "60", "--json")
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["steps"] == 60
    assert result["val_mse"] < result["val_mse_identity"]
    assert result["val_cos"] > result["val_cos_identity"]
    model, meta = load_shortcut(tmp_path / "ck", debug_base)
    assert meta["base_fingerprint"] == debug_base.fingerprint and meta["step"] == 60
    assert meta["summary"]["val_mse"] == pytest.approx(result["val_mse"], rel=1e-3)


def test_unrolled_balanced_training_beats_the_cache_over_chained_calls(store, tmp_path, debug_base):
    """train.unroll chains shortcut calls from its own predictions, as generation does; a shortcut
    with query positions trains, rolls out and generates."""
    from migmcut import schedule_search as ss

    res = train("--store", str(store), "--out", str(tmp_path / "ck"), "--max-steps", "60", "--json",
                "--set", "train.unroll=3", "--set", "train.step_balance=1", "--set", "shortcut.query_positions=true")
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["steps"] == 60 and result["val_mse"] < result["val_mse_identity"]
    model, meta = load_shortcut(tmp_path / "ck", debug_base)
    assert meta["train"]["unroll"] == 3 and model.config.query_positions
    gen = runner.invoke(app, ["generate", "--recipe", "debug", "--device", "cpu", "--prompt", "a large red circle",
                              "--shortcut", str(tmp_path / "ck"), "--budget", "2", "--out", str(tmp_path / "img"), "--json"])
    assert gen.exit_code == 0, gen.output
    assert json.loads(gen.stdout)["shortcut_calls"] > 0
    from migmcut.store.reader import TrajectoryStore

    opened = TrajectoryStore(store)
    errors = ss.rollout_errors(opened, opened.complete_indices()[:4], debug_base, model)
    two_step = lambda e: np.nanmean(e.mse[:, 2])  # noqa: E731
    assert two_step(errors["shortcut"]) < two_step(errors["cache"])


def test_rollout_chains_each_call_from_the_previous_prediction():
    """train.unroll's module: call j reads call j-1's output, not the recorded h of its own step."""
    from migmcut.shortcut import Shortcut, ShortcutConfig
    from migmcut.training import Rollout

    torch.manual_seed(0)
    net = Shortcut(ShortcutConfig(feature_dim=8, heads=2)).eval()
    torch.nn.init.normal_(net.out_proj.weight)  # an untrained shortcut is the identity: chaining would not show
    steps = [dict(h=torch.randn(2, 6, 8), new_emb=torch.randn(2, 3, 8), new_mask=torch.ones(2, 3, dtype=torch.bool),
                  mask_ratio=torch.full((2,), r)) for r in (0.8, 0.5, 0.2)]
    preds = Rollout(net)(steps)
    expect = steps[0]["h"]
    for x, got in zip(steps, preds):
        expect = net(**{**x, "h": expect})
        torch.testing.assert_close(got, expect)
    assert not torch.allclose(preds[1], net(**steps[1]))  # not from the recorded h of step 1


def test_balanced_mse_weighs_every_pair_by_its_cache_error():
    from migmcut.training import balanced_mse, masked_mse

    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 5, 4, generator=g)
    target = h + torch.tensor([1.0, 0.1, 0.01])[:, None, None] * torch.randn(3, 5, 4, generator=g)
    pred = h + 0.5 * (target - h)  # every pair a quarter of its cache error
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[2, 3:] = False
    assert balanced_mse(pred, target, h, mask, 0.0) == pytest.approx(masked_mse(pred, target, mask).item())
    assert balanced_mse(pred, target, h, mask, 1.0).item() == pytest.approx(0.25, rel=1e-5)
    mask[1] = False  # a pair with nothing left to predict does not count
    assert balanced_mse(pred, target, h, mask, 1.0).item() == pytest.approx(0.25, rel=1e-5)


def test_a_checkpoint_from_before_query_positions_still_loads(tmp_path, debug_base):
    from migmcut.shortcut import Shortcut, ShortcutConfig

    old = Shortcut(ShortcutConfig(feature_dim=debug_base.feature_dim, heads=2, query_positions=False))
    old.save(tmp_path / "ck", {"base_fingerprint": debug_base.fingerprint})
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    del config["shortcut"]["query_positions"]
    (tmp_path / "ck" / "config.json").write_text(json.dumps(config))
    model, _ = load_shortcut(tmp_path / "ck", debug_base)
    assert model.config.query_positions is False and not hasattr(model, "pos_proj")


def test_a_bf16_base_trains_the_same_shortcut_checkpoint_format(store, tmp_path, debug_base):
    """`--dtype bf16` (the default on a GPU) loads the frozen base in bf16: no fp32 copy of it."""
    res = train("--store", str(store), "--out", str(tmp_path / "ck"), "--max-steps", "60", "--dtype", "bf16",
                "--json")
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["val_mse"] < result["val_mse_identity"] and 0 <= result["val_top1"] <= 1
    model, meta = load_shortcut(tmp_path / "ck", debug_base)  # the fingerprint does not depend on the dtype
    assert next(model.parameters()).dtype == torch.float32


def test_a_damaged_store_is_refused_naming_the_trajectory(store, tmp_path):
    """Training never learns from garbage: a flipped byte in a feature shard stops it (exit 2)."""
    import shutil

    damaged = tmp_path / "s"
    shutil.copytree(store, damaged)
    for shard in (damaged / "features" / "c").glob("*/0/0/0/0"):  # whichever is read first is damaged
        data = shard.read_bytes()
        shard.write_bytes(data[:50] + bytes([data[50] ^ 0xFF]) + data[51:])
    res = train("--store", str(damaged), "--out", str(tmp_path / "ck"), "--max-steps", "20")
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(r"trajectory \d+ is damaged", lines[0]) and "store verify" in lines[0]
    assert not (tmp_path / "ck" / "shortcut.safetensors").exists()


def test_resume_continues_from_the_saved_step(store, tmp_path):
    out = str(tmp_path / "ck")
    first = train("--store", str(store), "--out", out, "--max-steps", "10", "--json")
    assert first.exit_code == 0, first.output
    again = train("--store", str(store), "--out", out, "--max-steps", "20", "--resume", "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["steps"] == 20
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["step"] == 20


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda s, t: ["--store", str(t / "absent"), "--out", str(t / "o")], "absent"),
        (lambda s, t: ["--store", str(s), "--out", str(t / "o"), "--resume"], "no trainer state"),
        (lambda s, t: ["--store", str(s), "--out", str(t / "o"), "--set", "base.init_seed=7"], "recorded with base"),
        (lambda s, t: ["--store", str(s), "--out", str(t / "o"), "--max-steps", "0"], "max-steps must be >= 1"),
        (lambda s, t: ["--store", str(s), "--out", str(t / "o"), "--lr", "-1"], "--lr must be > 0"),
        (lambda s, t: ["--store", str(s), "--out", str(t / "o"), "--set", "train.unroll=99"], "train.unroll must be below"),
        (lambda s, t: ["--store", str(s), "--out", str(t / "o"), "--set", "train.step_balance=2"], "step_balance must be in"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(store, tmp_path, make_args, message):
    res = train(*make_args(store, tmp_path))
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert not (tmp_path / "o" / "shortcut.safetensors").exists()


def test_a_store_without_complete_trajectories_is_refused(tmp_path):
    import zarr

    empty = tmp_path / "empty"
    res = runner.invoke(app, ["record", "--recipe", "debug", "--out", str(empty), "--num", "4"])
    assert res.exit_code == 0
    zarr.open_group(str(empty), mode="r+")["complete"][:] = False  # as if every block was interrupted
    res = train("--store", str(empty), "--out", str(tmp_path / "o"))
    assert res.exit_code == 2 and "no complete trajectories" in res.stderr, res.stderr


def test_a_checkpoint_for_another_base_is_refused_on_resume(store, tmp_path):
    out = tmp_path / "ck"
    assert train("--store", str(store), "--out", str(out), "--max-steps", "2").exit_code == 0
    config = json.loads((out / "config.json").read_text())
    config["base_fingerprint"] = "0123456789abcdef"
    (out / "config.json").write_text(json.dumps(config))
    res = train("--store", str(store), "--out", str(out), "--max-steps", "4", "--resume")
    assert res.exit_code == 2 and "belongs to base 0123456789abcdef" in res.stderr


def _cli(*args):
    return [sys.executable, "-m", "migmcut.cli.main", *args]


def test_kill_9_during_train_leaves_a_loadable_checkpoint_and_resume_finishes(store, tmp_path, debug_base):
    out = tmp_path / "ck"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = ["train", "--recipe", "debug", "--device", "cpu", "--store", str(store), "--out", str(out),
            "--max-steps", "400", "--set", "train.checkpoint_every=2", "--set", "train.val_every=1000"]
    proc = subprocess.Popen(_cli(*args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "trainer.pt").exists():
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert (out / "trainer.pt").exists(), "no checkpoint was written before the deadline"
    model, meta = load_shortcut(out, debug_base)  # never half-written
    killed_at = meta["step"]
    assert 0 < killed_at < 400
    done = subprocess.run(_cli(*args[:-6], "--max-steps", str(killed_at + 4), "--resume", "--json"),
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["steps"] == killed_at + 4


def test_ddp_under_torchrun_with_two_processes(store, tmp_path, debug_base):
    out = tmp_path / "ck"
    env = dict(os.environ, OMP_NUM_THREADS="1", MIGMCUT_BACKEND="gloo")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "migmcut.cli.main", "train", "--recipe", "debug", "--device", "cpu", "--store", str(store),
           "--out", str(out), "--max-steps", "6", "--json"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, done.stdout  # rank 0 alone reports
    assert json.loads(lines[0])["steps"] == 6
    load_shortcut(out, debug_base)


def test_a_finished_checkpoint_is_never_overwritten_without_resume_or_overwrite(store, tmp_path):
    out = tmp_path / "ck"
    assert train("--store", str(store), "--out", str(out), "--max-steps", "4", "--json").exit_code == 0
    before = (out / "shortcut.safetensors").read_bytes()
    res = train("--store", str(store), "--out", str(out), "--max-steps", "4", "--seed", "1")
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1, res.output
    assert "--resume" in res.stderr and "--overwrite" in res.stderr
    assert (out / "shortcut.safetensors").read_bytes() == before
    res = train("--store", str(store), "--out", str(out), "--max-steps", "4", "--seed", "1", "--overwrite", "--json")
    assert res.exit_code == 0, res.output
    assert (out / "shortcut.safetensors").read_bytes() != before


def test_resume_reports_only_its_own_steps_and_a_finished_run_keeps_its_summary(store, tmp_path):
    out = str(tmp_path / "ck")
    assert train("--store", str(store), "--out", out, "--max-steps", "4").exit_code == 0
    res = train("--store", str(store), "--out", out, "--max-steps", "6", "--resume")
    assert res.exit_code == 0, res.output
    assert "trained 2 steps (to step 6)" in res.stdout, res.output
    assert re.fullmatch(r"(training loss \S+ \d+ pairs/s: \d/6\n)+", res.stderr), res.stderr  # off a terminal
    res = train("--store", str(store), "--out", out, "--max-steps", "6", "--resume")
    assert res.exit_code == 0, res.output
    assert "nothing to do" in res.stdout and "val_mse" in res.stdout, res.output


def test_a_second_train_on_the_same_out_is_refused_while_the_first_holds_it(store, tmp_path):
    out = tmp_path / "ck"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from migmcut.files import dir_lock\n"
         f"with dir_lock({str(out)!r}, 'busy'):\n    print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        res = train("--store", str(store), "--out", str(out), "--max-steps", "2")
        assert res.exit_code == 2, res.output
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "another migmcut process" in lines[0]
    finally:
        holder.kill()
        holder.wait()
    assert train("--store", str(store), "--out", str(out), "--max-steps", "2").exit_code == 0  # the lock died with it


def test_a_full_disk_during_train_is_one_line_and_leaves_no_tmp_file(store, tmp_path, monkeypatch):
    import errno

    def full(obj, path):
        open(path, "wb").write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "ck"
    res = train("--store", str(store), "--out", str(out), "--max-steps", "2", "--json")
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "no space left" in lines[0] and not res.stdout, res.stderr
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_checkpoint_files_have_the_same_umask_mode(store, tmp_path):
    out = tmp_path / "ck"
    assert train("--store", str(store), "--out", str(out), "--max-steps", "2").exit_code == 0
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert len(set(modes.values())) == 1 and modes["shortcut.safetensors"] & 0o044, modes


def test_a_checkpoint_whose_config_does_not_match_its_weights_is_one_line(tmp_path, debug_base):
    from migmcut.shortcut import Shortcut, ShortcutConfig

    Shortcut(ShortcutConfig(feature_dim=debug_base.feature_dim, heads=2)).save(
        tmp_path / "ck", {"base_fingerprint": debug_base.fingerprint})
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    config["shortcut"]["ratio"] = 1  # twice the width the weights have
    (tmp_path / "ck" / "config.json").write_text(json.dumps(config))
    res = runner.invoke(app, ["generate", "--recipe", "debug", "--device", "cpu", "--prompt", "a large red circle",
                              "--shortcut", str(tmp_path / "ck"), "--budget", "2", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(r"tensor \S+ has shape \(\d+, \d+\), the architecture wants", lines[0]), lines


def test_a_store_recorded_by_another_sampler_is_flagged_naming_the_setting(store, tmp_path):
    res = train("--store", str(store), "--out", str(tmp_path / "ck"), "--max-steps", "2", "--json",
                "--set", "sampler.noise_schedule=linear-to-zero", "--set", "train.val_every=2")
    assert res.exit_code == 0, res.output
    assert "sampler.noise_schedule 'linear' (recipe: 'linear-to-zero')" in res.stderr, res.stderr
    assert "noise_schedule" in json.loads(res.stdout)["sampler_warning"]
    same = train("--store", str(store), "--out", str(tmp_path / "ck2"), "--max-steps", "2", "--json",
                 "--set", "train.val_every=2", "--set", "sampler.budget_rounding=half-even")
    assert same.exit_code == 0 and "sampler_warning" not in json.loads(same.stdout) and "warning" not in same.stderr
