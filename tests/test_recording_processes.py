"""`migmcut record` as real processes: SIGKILL mid-run then resume, two torchrun ranks, and two
uncoordinated processes on one store.

Each starts fresh Python processes (torch + transformers imports dominate), so they are marked
slow; both compare against a store recorded in-process with the same options.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from store_helpers import assert_same_store, one_thread
from typer.testing import CliRunner

from migmcut.cli.main import app
from migmcut.store import TrajectoryStore

pytestmark = pytest.mark.slow
runner = CliRunner()
N, BLOCK = 24, 4
ARGS = ["record", "--recipe", "debug", "--device", "cpu", "--block-size", str(BLOCK)]


def env():
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "store"
    with one_thread():
        res = runner.invoke(app, [*ARGS, "--out", str(path), "--num", str(N), "--batch-size", "3"])
    assert res.exit_code == 0, res.output
    return path


@pytest.mark.parametrize(
    "when, ready, at_least",
    [
        # the store's metadata is written, no trajectory is complete yet
        ("before the first trajectory completes", lambda p: (p / "complete" / "zarr.json").exists(), 0),
        # two blocks are complete: the third is being computed or written
        ("mid-run", lambda p: (p / "complete" / "c" / "1").exists(), 2 * BLOCK),
    ],
)
def test_sigkill_then_the_same_command_gives_the_same_store(reference, tmp_path, when, ready, at_least):
    path = tmp_path / "store"
    cmd = [*ARGS, "--out", str(path), "--num", str(N), "--batch-size", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "migmcut.cli.main", *cmd], env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    try:
        while not ready(path):
            assert proc.poll() is None, f"record exited early: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, "record did not get going in time"
            time.sleep(0.01)
        assert proc.poll() is None, "record finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done = len(TrajectoryStore(path).complete_indices())
    assert at_least <= done < N, when
    with one_thread():
        res = runner.invoke(app, [*cmd, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["written"] == N - done
    assert_same_store(path, reference)


def test_two_torchrun_ranks_write_the_same_store_as_one_process(reference, tmp_path):
    path = tmp_path / "store"
    # `-n`: torchrun's own parser would take `--num` for an abbreviation of --numa-binding
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "migmcut.cli.main", *ARGS, "--out", str(path), "-n", str(N), "--batch-size", "2", "--json"]
    res = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    payloads = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert len(payloads) == 1, res.stdout  # only rank 0 reports
    assert payloads[0]["written"] == N and payloads[0]["trajectories"] == N
    assert_same_store(path, reference)


def _locked(path) -> bool:
    """Whether some process holds the store's writer lock (probed without taking it for long)."""
    import fcntl

    if not path.is_dir():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def test_a_second_uncoordinated_record_is_refused_and_the_first_finishes(reference, tmp_path):
    path = tmp_path / "store"
    cmd = [sys.executable, "-m", "migmcut.cli.main", *ARGS, "--out", str(path), "--num", str(N), "--batch-size", "1"]
    first = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    try:
        while not _locked(path):
            assert first.poll() is None, f"record exited early: {first.stderr.read().decode()}"
            assert time.monotonic() < deadline, "record did not get going in time"
            time.sleep(0.01)
        os.kill(first.pid, signal.SIGSTOP)  # hold the first mid-run, whatever the machine's speed
        try:
            second = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=180)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        assert second.returncode == 2, second.stderr
        assert "being recorded by another migmcut process" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1 and "Traceback" not in second.stderr
        assert first.wait(timeout=300) == 0, first.stderr.read().decode()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=30)
    assert_same_store(path, reference)
