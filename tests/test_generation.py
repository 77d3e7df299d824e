"""generate never replaces images: files are numbered on from those in --out, also for runs at the same
time; nothing is created before the input is known good; progress lines off a terminal."""

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from migmcut.cli.main import app
from migmcut.files import write_numbered

runner = CliRunner()


def generate(*args):
    return runner.invoke(app, ["generate", "--recipe", "debug", "--device", "cpu", *args])


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_a_second_run_into_the_same_out_keeps_the_first_runs_images(tmp_path):
    out = tmp_path / "o"
    first = generate("--prompt", "a large red circle", "-n", "2", "--out", str(out), "--json")
    assert first.exit_code == 0, first.output
    kept = {p: digest(p) for p in json.loads(first.stdout)["images"]}
    second = generate("--prompt", "a small blue square", "-n", "2", "--seed", "1", "--out", str(out))
    assert second.exit_code == 0, second.output
    assert "0002-a-small-blue-square.png ... 0003-a-small-blue-square.png" in second.stdout, second.stdout
    assert {p: digest(p) for p in kept} == kept  # untouched
    assert sorted(os.listdir(out)) == ["0000-a-large-red-circle.png", "0001-a-large-red-circle.png",
                                       "0002-a-small-blue-square.png", "0003-a-small-blue-square.png"]


def test_numbering_follows_the_highest_number_and_never_replaces_a_file(tmp_path):
    (tmp_path / "0007-mine.png").write_bytes(b"not ours")
    (tmp_path / "0008-x.png").write_bytes(b"not ours either")
    (tmp_path / "notes.txt").write_text("keep")
    path = write_numbered(tmp_path, "x.png", lambda p: p.write_bytes(b"new"))
    assert path.name == "0009-x.png" and path.read_bytes() == b"new"
    assert (tmp_path / "0008-x.png").read_bytes() == b"not ours either"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary file left


def test_writers_at_the_same_time_each_get_their_own_numbers(tmp_path):
    """Threads stand in for processes here (each claim opens its own lock); the subprocess test is below."""
    made, barrier = [], threading.Barrier(8)

    def writer(k):
        barrier.wait()
        for j in range(5):
            made.append(write_numbered(tmp_path, "same.png", lambda p: p.write_bytes(f"{k}-{j}".encode())))

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 40 and sorted(os.listdir(tmp_path)) == [f"{n:04d}-same.png" for n in range(40)]
    assert sorted(p.read_bytes() for p in made) == sorted(f"{k}-{j}".encode() for k in range(8) for j in range(5))


def test_two_generate_processes_into_one_out_keep_all_their_images_and_report_their_own(tmp_path):
    out = tmp_path / "shared"
    cmd = [sys.executable, "-m", "migmcut.cli.main", "generate", "--recipe", "debug", "--device", "cpu",
           "--prompt", "a large red circle", "-n", "4", "--batch-size", "1", "--out", str(out), "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([*cmd, "--seed", str(seed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                              text=True) for seed in (1, 2)]
    reports = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        reports.append(json.loads(stdout)["images"])
        assert "generating: 4/4" in stderr  # progress off a terminal, with --json too
    a, b = (set(r) for r in reports)
    assert len(a) == len(b) == 4 and not a & b
    assert sorted(str(out / n) for n in os.listdir(out)) == sorted(a | b)  # all eight kept, nothing else
    # each process's files hold its own images: the same seed alone in a fresh folder gives the same bytes
    for seed, paths in zip((1, 2), reports):
        alone = generate("--prompt", "a large red circle", "-n", "4", "--batch-size", "1", "--seed", str(seed),
                         "--out", str(tmp_path / f"alone{seed}"), "--json")
        assert [Image.open(p).tobytes() for p in paths] == [Image.open(p).tobytes()
                                                             for p in json.loads(alone.stdout)["images"]]


@pytest.mark.parametrize("args", [
    ["--prompt", "a tiny red circle"],  # a word the base does not know: found when the prompts are encoded
    ["--prompt", "a red circle", "--budget", "99"],
    ["--prompt", "a red circle", "--method", "cache"],
    ["--prompt", "a red circle", "--shortcut", "/nonexistent", "--budget", "2"],
    ["--prompt", "a red circle", "--set", "sampler.stepz=3"],
    ["--prompt", "a red circle", "--method", "mlcache", "--budget", "1"],
    ["--class", "3"],
])
def test_refused_input_creates_no_out_directory(tmp_path, args):
    out = tmp_path / "a" / "b"
    res = generate("--out", str(out), *args)
    assert res.exit_code == 2, res.output
    assert not (tmp_path / "a").exists()


def test_an_out_under_a_file_is_refused_before_any_work(tmp_path):
    (tmp_path / "f").write_text("x")
    res = generate("--prompt", "a large red circle", "--out", str(tmp_path / "f" / "sub"))
    assert res.exit_code == 2 and "--out" in res.stderr and "not a directory" in res.stderr, res.output
    assert len(res.stderr.strip().splitlines()) == 1


def test_progress_lines_go_to_stderr_off_a_terminal_also_with_json(tmp_path):
    res = generate("--prompt", "a large red circle", "-n", "3", "--batch-size", "1", "--out", str(tmp_path), "--json")
    assert res.exit_code == 0, res.output
    assert res.stderr.splitlines() == ["generating: 1/3", "generating: 2/3", "generating: 3/3"]
    assert len(json.loads(res.stdout)["images"]) == 3 and res.stdout.count("\n") == 1


def test_a_folder_another_job_holds_is_refused_rather_than_waited_for(tmp_path, monkeypatch):
    import migmcut.files as files
    from migmcut.errors import UserError

    real = files._claim
    monkeypatch.setattr(files, "_claim", lambda fd, d, fcntl: real(fd, d, fcntl, wait_s=0.2))
    with files.dir_lock(tmp_path, "held"):  # as a train or record job holds its folder
        with pytest.raises(UserError, match="another migmcut job holds this folder"):
            write_numbered(tmp_path, "x.png", lambda p: p.write_bytes(b"x"))
    assert os.listdir(tmp_path) == []
    assert write_numbered(tmp_path, "x.png", lambda p: p.write_bytes(b"x")).name == "0000-x.png"
