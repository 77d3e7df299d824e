"""`migmcut record`: output, resume, independence from batch size, crash safety, bad input, URLs."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil

import fsspec
import pytest
from store_helpers import BATCH, BLOCK, NUM, assert_same_store, contents, one_thread
from typer.testing import CliRunner

from migmcut.cli.main import app
from migmcut.recording import record
from migmcut.store import TrajectoryStore, location
from migmcut.store.writer import StoreWriter

runner = CliRunner()


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def invoke(*args):
    return runner.invoke(app, ["record", "--recipe", "debug", "--device", "cpu", *args])


def rec(out, *args):
    return invoke("--out", str(out), "--num", str(NUM), "--block-size", str(BLOCK), *args)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "store"
    with one_thread():
        res = rec(path, "--batch-size", str(BATCH), "--json")
    assert res.exit_code == 0, res.output
    return path, json.loads(res.stdout)


def test_record_reports_json_and_a_second_run_does_nothing(reference):
    path, payload = reference
    assert set(payload) == {"store", "trajectories", "written", "seconds", "bytes"}
    assert payload["store"] == str(path) and payload["trajectories"] == payload["written"] == NUM
    assert payload["bytes"] == location.size_bytes(location.resolve(path)) > 0
    before = contents(path)
    again = rec(path, "--batch-size", "5", "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["written"] == 0
    after = contents(path)
    assert before[0] == after[0] and all((before[1][k][1] == after[1][k][1]).all() for k in before[1])
    human = rec(path)
    assert human.exit_code == 0 and "nothing to do" in human.stdout and human.stderr == ""


def test_the_store_does_not_depend_on_batch_size(reference, tmp_path):
    res = rec(tmp_path / "b5", "--batch-size", "5", "--json")
    assert res.exit_code == 0, res.output
    assert_same_store(tmp_path / "b5", reference[0])


def test_dry_run_describes_the_store_and_writes_nothing(tmp_path):
    out = tmp_path / "planned"
    res = invoke("--out", str(out), "--num", "1000", "--codec", "int8", "--dry-run", "--json")
    assert res.exit_code == 0, res.output
    plan = json.loads(res.stdout)
    assert not out.exists()
    arrays = {a["name"]: a for a in plan["arrays"]}
    assert arrays["features"]["shape"] == [1000, 2, 8, 256, 32] and arrays["features"]["dtype"] == "int8"
    assert arrays["feature_scale"]["shape"] == [1000, 2, 8, 256]
    assert {"tokens", "order", "prompts", "seeds", "complete"} <= set(arrays)
    assert plan["action"] == "create" and 0 < plan["bytes_estimated"] < plan["bytes_raw"]
    human = invoke("--out", str(out), "--num", "1000", "--dry-run")
    assert human.exit_code == 0 and "features" in human.stdout and "estimated" in human.stdout
    assert human.stderr == "" and not out.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--num", "0"], "--num must be >= 1"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--steps", "999"], "exceeds the number of image tokens"),
        (["--codec", "zip"], "--codec 'zip'"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--seed", "-1"], "--seed must be >= 0"),
        (["--recipe", "nope"], "unknown recipe"),
        (["--set", "sampler.stepz=3"], "unknown key"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "store"
    res = invoke("--out", str(out), *args)
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert res.stdout == "" and "Traceback" not in res.output
    assert not out.exists()


def test_unwritable_out_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    for out, message in [(blocker / "sub", "cannot write"), (blocker, "not a directory")]:
        res = invoke("--out", str(out), "--num", "2")
        assert res.exit_code == 2, res.output
        assert len(res.stderr.strip().splitlines()) == 1 and message in res.stderr
    assert blocker.read_text() == "not a directory"


def test_a_directory_that_is_not_a_store_is_never_touched(tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"meow")
    for extra in ([], ["--overwrite"], ["--dry-run"]):
        res = invoke("--out", str(foreign), "--num", "2", *extra)
        assert res.exit_code == 2, res.output
        assert "not a migmcut trajectory store" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in foreign.iterdir()) == ["cat.jpg"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert invoke("--out", str(empty), "--num", "2", "--json").exit_code == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--codec", "int8"], "codec 'bf16' (this run: 'int8')"),
        (["--steps", "4"], "steps 8 (this run: 4)"),
        (["--num", "11"], f"num {NUM} (this run: 11)"),  # fewer: a store grows (-n 13 appends), never shrinks
        (["--seed", "1"], "seed 0 (this run: 1)"),
        (["--set", "sampler.cfg=1.0"], "recipe sampler.cfg 2.0 (this run: 1.0)"),
        (["--set", "sampler.noise_schedule=constant"], "recipe sampler.noise_schedule 'linear' (this run: 'constant')"),
        (["--set", "sampler.schedule=maskgit"], "recipe sampler.schedule 'cosine' (this run: 'maskgit')"),
        (["--set", "base.init_seed=1"], "fingerprint"),
    ],
)
def test_a_store_recorded_differently_is_refused_unless_overwrite(reference, tmp_path, args, message):
    path = tmp_path / "store"
    shutil.copytree(reference[0], path)
    before = contents(path)
    res = rec(path, *args)  # later --num wins over rec's
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "--overwrite" in lines[0], res.stderr
    after = contents(path)
    assert before[0] == after[0]


def test_overwrite_replaces_a_store(reference, tmp_path):
    path = tmp_path / "store"
    shutil.copytree(reference[0], path)
    res = invoke("--out", str(path), "--num", "3", "--steps", "4", "--codec", "fp16", "--overwrite", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["written"] == 3
    s = TrajectoryStore(path)
    assert (s.num, s.steps, s.codec) == (3, 4, "fp16") and list(s.complete_indices()) == [0, 1, 2]
    assert not (path / "features" / "c" / "5").exists()  # nothing of the old store is left


# -- crash safety (in-process faults; tests/test_recording_processes.py kills a real process) -------
class Boom(RuntimeError):
    pass


def _fail_on_call(monkeypatch, owner, name, k):
    original = getattr(owner, name)
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == k:
            raise Boom(f"{name} #{k}")
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, failing)


@pytest.mark.parametrize(
    "owner, name, k",
    [
        (StoreWriter, "write_features", 1),  # before anything of block 0 is complete
        (StoreWriter, "write_features", 4),  # mid block 1, block 0 complete
        (StoreWriter, "finish_block", 3),  # block 2's features written, its small arrays not
        (location, "fsync_tree", 3),  # block 1's small arrays written, its complete flags not
    ],
)
def test_an_interrupted_run_resumes_to_the_same_store(reference, tmp_path, monkeypatch, debug_recipe, debug_base,
                                                      owner, name, k):
    path = tmp_path / "store"
    with monkeypatch.context() as m:
        _fail_on_call(m, owner, name, k)
        with pytest.raises(Boom):
            record(debug_recipe, str(path), num=NUM, batch_size=BATCH, block_size=BLOCK, base=debug_base)
    partial = TrajectoryStore(path).complete_indices()
    assert len(partial) < NUM
    result = record(debug_recipe, str(path), num=NUM, batch_size=2, block_size=BLOCK, base=debug_base)
    assert result.written == NUM - len(partial)
    assert_same_store(path, reference[0])


def test_disk_full_is_one_line_exit_2_and_the_store_resumes(reference, tmp_path, monkeypatch):
    path = tmp_path / "store"
    original = StoreWriter.write_features
    calls = {"n": 0}

    def full_disk(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # trajectory 5, mid block 1: block 0 is complete
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path / "features"))
        return original(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(StoreWriter, "write_features", full_disk)
        res = rec(path, "--batch-size", "1", "--json")  # --json: no progress lines
    assert res.exit_code == 2, res.output
    assert "no space left" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "Traceback" not in res.output
    kept = TrajectoryStore(path).complete_indices()
    assert 0 < len(kept) < NUM
    verify = runner.invoke(app, ["store", "verify", str(path)])
    assert verify.exit_code == 0, verify.output
    again = rec(path, "--batch-size", str(BATCH), "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["written"] == NUM - len(kept)
    assert_same_store(path, reference[0])


def test_a_store_being_recorded_is_refused_and_released_afterwards(reference, tmp_path):
    path = tmp_path / "store"
    with location.writer_lock(location.resolve(path)):  # what a running `record` holds
        res = rec(path)
        assert res.exit_code == 2, res.output
        assert "being recorded by another migmcut process" in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
        assert not any(path.iterdir())  # the refused run wrote nothing
    assert not path.exists()  # the lock's own directory goes when nothing was recorded
    res = rec(path, "--batch-size", str(BATCH))
    assert res.exit_code == 0, res.output
    assert_same_store(path, reference[0])


def test_overwrite_keeps_the_locked_directory(reference, tmp_path):
    path = tmp_path / "store"
    shutil.copytree(reference[0], path)
    inode = path.stat().st_ino
    res = rec(path, "--steps", "3", "--overwrite", "--json")
    assert res.exit_code == 0, res.output
    assert path.stat().st_ino == inode  # cleared in place, so the writer lock stayed on the store
    assert TrajectoryStore(path).steps == 3


def test_torn_leftovers_are_rewritten_not_merged(reference, tmp_path, debug_recipe, debug_base):
    """What a kill -9 can leave: temp files, a store whose flags say incomplete, torn files."""
    path = tmp_path / "store"
    shutil.copytree(reference[0], path)
    complete_chunk = path / "complete" / "c" / "1"
    complete_chunk.write_bytes(complete_chunk.read_bytes()[:3])  # unreadable: block 1 counts as incomplete
    shard = path / "features" / "c" / "5" / "0" / "0" / "0" / "0"
    shard.write_bytes(shard.read_bytes()[:100])
    (path / "tokens" / "c" / "1" / "0").write_bytes(b"garbage")
    (path / "features" / "c" / "6" / "0" / "0" / "0" / "0.1234.partial").write_bytes(b"half a shard")
    result = record(debug_recipe, str(path), num=NUM, batch_size=BATCH, block_size=BLOCK, base=debug_base)
    assert result.written == BLOCK
    assert not list(path.rglob("*.partial"))
    assert_same_store(path, reference[0])


# -- remote stores -------------------------------------------------------------------------------
def test_memory_url_store_via_cli_and_reader(reference):
    url = "memory://migmcut-test/store"
    try:
        res = rec(url, "--batch-size", "4", "--json")
        assert res.exit_code == 0, res.output
        payload = json.loads(res.stdout)
        assert payload["store"] == url and payload["written"] == NUM and payload["bytes"] > 0
        again = rec(url, "--json")
        assert json.loads(again.stdout)["written"] == 0
        assert_same_store(url, reference[0])
        s = TrajectoryStore(url)
        assert len(s.complete_indices()) == NUM
        assert runner.invoke(app, ["store", "verify", url]).exit_code == 0
        assert runner.invoke(app, ["store", "info", url, "--json"]).exit_code == 0
    finally:
        fs = fsspec.filesystem("memory")
        if fs.exists("/migmcut-test"):
            fs.rm("/migmcut-test", recursive=True)


def test_file_url_store(reference, tmp_path):
    url = f"file://{tmp_path}/viaurl"
    res = rec(url, "--batch-size", "6", "--json")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "viaurl" / "zarr.json").exists()
    assert_same_store(tmp_path / "viaurl", reference[0])
    assert json.loads(rec(url, "--json").stdout)["written"] == 0


def test_off_a_terminal_progress_is_plain_lines_on_stderr_and_the_result_on_stdout(tmp_path):
    res = rec(tmp_path / "store", "--batch-size", str(BATCH))
    assert res.exit_code == 0, res.output
    progress = res.stderr.strip().splitlines()
    assert progress and all(re.fullmatch(r"recording: \d+/\d+", line) for line in progress), res.stderr
    assert progress[-1] == f"recording: {NUM}/{NUM}"
    assert res.stdout.startswith(f"recorded {NUM} trajectories")


NEW_SAMPLER_SETTINGS = ("noise_schedule", "temperature_mode", "confidence", "budget_rounding")


def _as_before_the_sampler_settings(path):
    """Rewrite a store's attributes as a migmcut without the named sampler settings wrote them."""
    import zarr

    from migmcut.store.schema import ATTR

    group = zarr.open_group(str(path), mode="r+")
    attrs = group.attrs[ATTR]
    for section in (attrs["recipe"]["sampler"], attrs.get("sampler", {})):
        for key in NEW_SAMPLER_SETTINGS:
            section.pop(key, None)
    group.attrs[ATTR] = attrs


def test_a_store_from_before_the_sampler_settings_resumes_unless_the_sampler_behaves_otherwise(reference, tmp_path):
    path = tmp_path / "store"
    shutil.copytree(reference[0], path)
    _as_before_the_sampler_settings(path)
    assert "noise_schedule" not in TrajectoryStore(path).spec.sampler
    same = rec(path)  # the old sampler is today's defaults: the same store
    assert same.exit_code == 0 and "nothing to do" in same.stdout, same.output
    # no effect on a trajectory: the temperature's semantics at temperature 1, where full steps go
    inert = rec(path, "--set", "sampler.temperature_mode=multiply", "--set", "sampler.budget_rounding=half-even")
    assert inert.exit_code == 0 and "nothing to do" in inert.stdout, inert.output
    other = rec(path, "--set", "sampler.cfg_schedule=linear-from-zero")
    assert other.exit_code == 2, other.output
    assert "sampler.cfg_schedule 'linear' (this run: 'linear-from-zero')" in other.stderr, other.stderr
