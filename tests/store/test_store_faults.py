"""A store whose metadata is unreadable, in every command that opens a store: one line naming the
file, exit 2, nothing written. And the async library's noise after a failed write stays unsaid."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from migmcut.cli.main import app
from migmcut.errors import StoreError
from migmcut.store import TrajectoryStore
from migmcut.store.inspect import verify

runner = CliRunner()
COMMON = ["--recipe", "debug", "--device", "cpu"]
ARRAYS = ["features", "tokens", "order", "prompts", "seeds", "complete"]
COMMANDS = {
    "store info": lambda s, t: ["store", "info", str(s)],
    "store info --json": lambda s, t: ["store", "info", str(s), "--json"],
    "store verify": lambda s, t: ["store", "verify", str(s)],
    "store verify --repair": lambda s, t: ["store", "verify", str(s), "--repair"],
    "record": lambda s, t: ["record", *COMMON, "--out", str(s), "-n", "8"],
    "record (grow)": lambda s, t: ["record", *COMMON, "--out", str(s), "-n", "12"],
    "record --dry-run": lambda s, t: ["record", *COMMON, "--out", str(s), "-n", "8", "--dry-run"],
    "train": lambda s, t: ["train", *COMMON, "--store", str(s), "--out", str(t / "ck"), "--max-steps", "2"],
    "bench --store": lambda s, t: ["bench", *COMMON, "--store", str(s), "--methods", "vanilla", "--budgets", "2",
                                   "--out", str(t / "b")],
}
DAMAGE = {
    "truncated": lambda b: b[: len(b) // 2],
    "empty": lambda b: b"",
    "not json": lambda b: b"\x00\xff garbage",
    "another node": lambda b: json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}).encode(),
    "wrong shape type": lambda b: b.replace(b'"shape"', b'"shapes"'),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("faults") / "s"
    res = runner.invoke(app, ["record", *COMMON, "--out", str(path), "-n", "8", "--json"])
    assert res.exit_code == 0, res.output
    return path


def _damaged(store, tmp_path, name, how="truncated"):
    copy = tmp_path / "s"
    shutil.copytree(store, copy)
    meta = copy / name / "zarr.json"
    meta.write_bytes(DAMAGE[how](meta.read_bytes()))
    return copy


def _files(path):
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("name", ARRAYS)
def test_an_unreadable_array_metadata_file_is_one_line_exit_2_in_every_command(store, tmp_path, name, command):
    damaged = _damaged(store, tmp_path, name)
    before = _files(damaged)
    res = runner.invoke(app, COMMANDS[command](damaged, tmp_path))
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{name}/zarr.json" in lines[0] and "unreadable" in lines[0], res.stderr
    assert "Traceback" not in res.output and res.stdout == ""
    assert _files(damaged) == before  # nothing written, nothing "repaired"
    assert not (tmp_path / "ck" / "shortcut.safetensors").exists()


@pytest.mark.parametrize("how", list(DAMAGE))
def test_every_kind_of_damage_is_named_by_the_reader(store, tmp_path, how):
    damaged = _damaged(store, tmp_path, "tokens", how)
    with pytest.raises(StoreError, match=r"metadata file tokens/zarr.json is unreadable .*record it again"):
        TrajectoryStore(damaged)
    report = verify(damaged)  # the library's report names it among the layout's problems
    assert report["checked"] == 0 and any("tokens/zarr.json is unreadable" in p for p in report["problems"])


def test_the_groups_own_metadata_is_one_line_in_every_command(store, tmp_path):
    damaged = _damaged(store, tmp_path, ".")
    for command in COMMANDS.values():
        res = runner.invoke(app, command(damaged, tmp_path))
        assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1, res.output


def test_overwrite_replaces_a_store_whose_array_metadata_is_unreadable(store, tmp_path):
    damaged = _damaged(store, tmp_path, "features")
    res = runner.invoke(app, ["record", *COMMON, "--out", str(damaged), "-n", "4", "--overwrite", "--json"])
    assert res.exit_code == 0, res.output
    assert TrajectoryStore(damaged).num == 4


def test_a_missing_array_metadata_file_is_still_reported_as_missing(store, tmp_path):
    copy = tmp_path / "s"
    shutil.copytree(store, copy)
    (copy / "seeds" / "zarr.json").unlink()
    res = runner.invoke(app, ["store", "verify", str(copy)])
    assert res.exit_code == 2 and "array seeds is missing" in res.stderr, res.output


NOISY = textwrap.dedent('''
    """A store write that fails (full disk) while the other writes of its batch are still in flight."""
    import asyncio, errno, os, sys
    from zarr.storage import LocalStore

    original, calls = LocalStore.set, {"n": 0}

    async def flaky_set(self, key, value, *args, **kwargs):
        if key.startswith("features/c/"):
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), key)
            if calls["n"] > 3:
                await asyncio.sleep(30)  # still pending when the command ends
        return await original(self, key, value, *args, **kwargs)

    LocalStore.set = flaky_set
    from migmcut.cli.main import app
    sys.argv = ["migmcut", *sys.argv[1:]]
    app()
''')


@pytest.mark.parametrize("debug", [False, True])
def test_a_failed_write_with_others_in_flight_is_one_line_without_the_async_noise(tmp_path, debug):
    script = tmp_path / "noisy.py"
    script.write_text(NOISY)
    cmd = [sys.executable, str(script), *(["--debug"] if debug else []), "record", *COMMON,
           "--out", str(tmp_path / "s"), "-n", "16", "--block-size", "4", "--batch-size", "8", "--json"]
    env = {k: v for k, v in os.environ.items() if k != "MIGMCUT_DEBUG"}  # an earlier in-process --debug set it
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert "no space left" in lines[0]
    if debug:  # the noise is real (what the fix hides): --debug keeps it
        assert "Task was destroyed but it is pending" in done.stderr, done.stderr
    else:
        assert len(lines) == 1, done.stderr
