"""A store grows: `record -n M` on a store of n < M trajectories recorded with the same settings
appends n..M-1, and the result is the store `record -n M` makes at once."""

from __future__ import annotations

import json
import shutil

import pytest
from store_helpers import BATCH, BLOCK, NUM, assert_same_store, contents, one_thread
from typer.testing import CliRunner

from migmcut.cli.main import app
from migmcut.recording import record
from migmcut.store import TrajectoryStore
from migmcut.store.writer import StoreWriter

runner = CliRunner()


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def rec(out, num, *args):
    return runner.invoke(app, ["record", "--recipe", "debug", "--device", "cpu", "--out", str(out), "--num", str(num),
                               "--block-size", str(BLOCK), *args])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "store"
    with one_thread():
        res = rec(path, NUM, "--batch-size", str(BATCH), "--json")
    assert res.exit_code == 0, res.output
    return path


def _shards(path):
    """The feature shard files of a store: {relative path: (bytes, mtime_ns)}."""
    return {str(p.relative_to(path)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in (path / "features" / "c").rglob("*") if p.is_file()}


@pytest.mark.parametrize("first", [6, 8, 1])  # mid-block (6: the last block is part-full), a block boundary, one
def test_recording_more_appends_and_equals_recording_all_at_once(reference, tmp_path, first):
    path = tmp_path / "store"
    assert rec(path, first, "--batch-size", "5").exit_code == 0
    before = _shards(path)
    res = rec(path, NUM, "--batch-size", "5", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) | {"seconds": 0, "bytes": 0} == {
        "store": str(path), "trajectories": NUM, "written": NUM - first, "seconds": 0, "bytes": 0}
    assert_same_store(path, reference)
    after = _shards(path)
    assert all(after[k] == v for k, v in before.items())  # the first trajectories' shards were not rewritten
    again = rec(path, NUM, "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["written"] == 0


def test_growing_says_so_in_dry_run_and_in_the_library(reference, tmp_path, debug_recipe, debug_base):
    path = tmp_path / "store"
    assert rec(path, 6).exit_code == 0
    plan = rec(path, NUM, "--dry-run", "--json")
    assert plan.exit_code == 0 and json.loads(plan.stdout)["action"] == "grow", plan.output
    result = record(debug_recipe, str(path), num=NUM, batch_size=BATCH, block_size=BLOCK, base=debug_base)
    assert (result.action, result.written, result.trajectories) == ("grow", NUM - 6, NUM)
    assert_same_store(path, reference)


def test_a_store_still_being_recorded_grows_too(reference, tmp_path, monkeypatch, debug_recipe, debug_base):
    path = tmp_path / "store"
    original, calls = StoreWriter.write_features, {"n": 0}

    def fail_in_block_1(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # trajectory 4: block 0 is complete
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(StoreWriter, "write_features", fail_in_block_1)
        with pytest.raises(KeyboardInterrupt):
            record(debug_recipe, str(path), num=6, batch_size=1, block_size=BLOCK, base=debug_base)
    assert 0 < len(TrajectoryStore(path).complete_indices()) < 6
    res = rec(path, NUM, "--batch-size", str(BATCH))
    assert res.exit_code == 0, res.output
    assert_same_store(path, reference)


def test_a_grow_interrupted_half_way_is_finished_by_the_same_command(reference, tmp_path, monkeypatch, debug_recipe,
                                                                     debug_base):
    path = tmp_path / "store"
    assert rec(path, 6).exit_code == 0
    def fail_once_block_1_is_sampled(self, *args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(StoreWriter, "finish_block", fail_once_block_1_is_sampled)
        with pytest.raises(KeyboardInterrupt):
            record(debug_recipe, str(path), num=NUM, batch_size=BATCH, block_size=BLOCK, base=debug_base)
    store = TrajectoryStore(path)
    assert store.num == NUM and list(store.complete_indices()) == list(range(6))  # the first six still readable
    store.read(5)
    res = rec(path, NUM, "--batch-size", "2", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["written"] == NUM - 6
    assert_same_store(path, reference)


@pytest.mark.parametrize("args, message", [
    (["--num", "4"], "num 6 (this run: 4)"),  # a store never shrinks
    (["--num", "12", "--seed", "1"], "seed 0 (this run: 1)"),
    (["--num", "12", "--steps", "4"], "steps 8 (this run: 4)"),
    (["--num", "12", "--codec", "int8"], "codec 'bf16' (this run: 'int8')"),
    (["--num", "12", "--set", "sampler.cfg=1.0"], "recipe sampler.cfg 2.0 (this run: 1.0)"),
])
def test_growing_with_other_settings_is_refused_as_before(tmp_path, args, message):
    path = tmp_path / "store"
    assert rec(path, 6).exit_code == 0
    before = contents(path)
    res = runner.invoke(app, ["record", "--recipe", "debug", "--device", "cpu", "--out", str(path),
                              "--block-size", str(BLOCK), *args])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "--overwrite" in lines[0], res.stderr
    after = contents(path)
    assert before[0] == after[0] and all((before[1][k][1] == after[1][k][1]).all() for k in before[1])


def test_the_block_size_of_the_store_wins_when_it_grows(reference, tmp_path):
    path = tmp_path / "store"
    shutil.rmtree(path, ignore_errors=True)
    assert rec(path, 6).exit_code == 0
    res = runner.invoke(app, ["record", "--recipe", "debug", "--device", "cpu", "--out", str(path), "--num", str(NUM),
                              "--block-size", "5"])
    assert res.exit_code == 0, res.output
    assert TrajectoryStore(path).spec.block_size == BLOCK
    assert_same_store(path, reference)
