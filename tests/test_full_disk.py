"""A real full disk (a tiny tmpfs, mounted in a user + mount namespace of its own) in every command
that writes: one line, exit 2, no traceback, nothing half-written. Skipped where such a namespace
cannot be made; tests/cli/test_cli_boundaries.py, test_record.py and test_train.py inject ENOSPC instead.
(`store verify --repair` needs no new space on a full disk: zarr deletes a chunk set to all-false flags;
test_cli_boundaries.py injects ENOSPC there.)"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from migmcut.cli.main import app

pytestmark = pytest.mark.slow
runner = CliRunner()
COMMON = ["--recipe", "debug", "--device", "cpu"]


def _namespaces() -> bool:
    if not shutil.which("unshare"):
        return False
    try:
        done = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null "
                               "|| mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


needs_tmpfs = pytest.mark.skipif(not _namespaces(), reason="cannot mount a tmpfs in a user namespace here")


def on_full_disk(disk, size: str, command: list[str], before: str = "", after: str = "") -> subprocess.CompletedProcess:
    """Run `migmcut COMMAND` with a `size` tmpfs mounted on `disk` (shell `before` it, `after` it)."""
    disk.mkdir(exist_ok=True)
    cli = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "migmcut.cli.main", *command])
    script = (f"set -e; mount -t tmpfs -o size={size} tmpfs {shlex.quote(str(disk))}; {before}\n"
              f"set +e; {cli}; rc=$?; {after}\nexit $rc")
    env = {k: v for k, v in os.environ.items() if k != "MIGMCUT_DEBUG"} | {"OMP_NUM_THREADS": "1"}
    return subprocess.run(["unshare", "-rm", "bash", "-c", script], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("full") / "s"
    res = runner.invoke(app, ["record", *COMMON, "--out", str(path), "-n", "8", "--json"])
    assert res.exit_code == 0, res.output
    return path


def _one_line(done, *words):
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no space left" in lines[0] and all(w in lines[0] for w in words), done.stderr[-3000:]


@needs_tmpfs
@pytest.mark.parametrize("size", ["48k", "400k"])  # while the store is created; mid-recording
def test_record(tmp_path, size):
    disk = tmp_path / "disk"
    done = on_full_disk(disk, size, ["record", *COMMON, "--out", str(disk / "s"), "-n", "16", "--block-size", "2",
                                     "--json"])
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr[-3000:]
    assert "No space left on device" in done.stderr and done.stdout == ""


@needs_tmpfs
@pytest.mark.parametrize("size", ["8k", "40k", "100k"])  # the first trainer.pt; shortcut.safetensors; a later save
def test_train(store, tmp_path, size):
    disk = tmp_path / "disk"
    out = disk / "ck"
    done = on_full_disk(disk, size, ["train", *COMMON, "--store", str(store), "--out", str(out), "--max-steps", "30",
                                     "--set", "train.checkpoint_every=2", "--json"],
                        after=f"echo LEFT: $(ls -A {shlex.quote(str(out))} 2>/dev/null)")
    _one_line(done, "the last checkpoint is intact")
    left = done.stdout.strip().splitlines()[-1].split()[1:]
    assert not [f for f in left if f.endswith(".tmp")], left  # nothing half-written
    assert set(left) in ({"trainer.pt", "shortcut.safetensors", "config.json"}, set()), left


@needs_tmpfs
def test_record_growing_a_store(store, tmp_path):
    disk = tmp_path / "disk"
    copy = disk / "s"
    done = on_full_disk(disk, "3m", ["record", *COMMON, "--out", str(copy), "-n", "64", "--json"],
                        before=f"cp -r {shlex.quote(str(store))} {shlex.quote(str(copy))}")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr[-3000:]
    assert "No space left on device" in done.stderr
