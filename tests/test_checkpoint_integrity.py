"""Shortcut checkpoints: a misspelt built-in is an error everywhere one is named, and a checkpoint's
tensors carry a sha256 in config.json that loading verifies (old checkpoints without one still load)."""

import json
import shutil
import struct

import pytest
import torch
from typer.testing import CliRunner

from migmcut.cli.main import app
from migmcut.errors import CheckpointError
from migmcut.shortcut import (
    BUILTIN, CHECKSUM_KEY, Shortcut, ShortcutConfig, load_shortcut, resolve_checkpoint, tensors_checksum,
)

runner = CliRunner()
COMMON = ["--recipe", "debug", "--device", "cpu"]
SHIPPED = BUILTIN / "tiny-shapes" / "shortcut"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A store and a checkpoint written by `train` (the trainer's path to the checkpoint writer)."""
    root = tmp_path_factory.mktemp("trained")
    store, ck = root / "store", root / "ck"
    assert runner.invoke(app, ["record", *COMMON, "--out", str(store), "-n", "8", "--json"]).exit_code == 0
    res = runner.invoke(app, ["train", *COMMON, "--store", str(store), "--out", str(ck), "--max-steps", "3", "--json"])
    assert res.exit_code == 0, res.output
    return store, ck


def _one_line(res, *words):
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and all(w in lines[0] for w in words), res.stderr
    assert "Traceback" not in res.output


# -- built-ins -------------------------------------------------------------------------------------
def test_a_shipped_builtin_resolves_and_a_misspelt_one_is_an_error_naming_the_shipped_ones():
    assert resolve_checkpoint("builtin:tiny-shapes") == SHIPPED
    for value in ("builtin:nope", "builtin:", "builtin:tiny-shape"):
        with pytest.raises(CheckpointError) as err:
            resolve_checkpoint(value)
        assert f"shortcut.checkpoint {value!r}" in str(err.value) and "builtin:tiny-shapes" in str(err.value)


@pytest.mark.parametrize("args, words", [
    (lambda t: ["generate", *COMMON, "--prompt", "a large red circle", "--set", "shortcut.checkpoint=builtin:nope",
                "--out", str(t / "o")], ["shortcut.checkpoint 'builtin:nope'", "builtin:tiny-shapes"]),
    (lambda t: ["generate", *COMMON, "--prompt", "a large red circle", "--method", "vanilla",
                "--set", "shortcut.checkpoint=builtin:nope", "--out", str(t / "o")], ["shortcut.checkpoint 'builtin:nope'"]),
    (lambda t: ["bench", *COMMON, "--methods", "vanilla", "--set", "shortcut.checkpoint=builtin:nope",
                "--out", str(t / "o")], ["shortcut.checkpoint 'builtin:nope'"]),
    (lambda t: ["train", *COMMON, "--store", str(t / "s"), "--init", "builtin:nope", "--out", str(t / "o")],
     ["--init builtin:nope", "builtin:tiny-shapes"]),
])
def test_a_misspelt_builtin_is_one_line_exit_2_in_every_command_not_vanilla(tmp_path, args, words):
    res = runner.invoke(app, args(tmp_path))
    _one_line(res, *words)
    assert not (tmp_path / "o").exists()


# -- checksums -------------------------------------------------------------------------------------
def _damage_payload(weights):
    """Flip one byte of the tensor data, after safetensors' header (which stays intact and parseable)."""
    data = bytearray(weights.read_bytes())
    start = 8 + struct.unpack("<Q", data[:8])[0]
    data[start + (len(data) - start) // 2] ^= 0x55
    weights.write_bytes(bytes(data))


def test_both_ways_of_writing_a_checkpoint_record_the_checksum_of_the_tensors(trained, tmp_path, debug_base):
    from safetensors.torch import load_file

    _, ck = trained
    saved = Shortcut(ShortcutConfig(feature_dim=debug_base.feature_dim, heads=2))
    saved.save(tmp_path / "sc", {"base_fingerprint": debug_base.fingerprint})
    for directory in (ck, tmp_path / "sc"):
        meta = json.loads((directory / "config.json").read_text())
        assert meta[CHECKSUM_KEY] == tensors_checksum(load_file(directory / "shortcut.safetensors"))
        load_shortcut(directory, debug_base)
    assert not list(tmp_path.glob("sc/.*.tmp"))


def test_the_checksum_covers_names_shapes_dtypes_and_bytes():
    t = {"a": torch.arange(6, dtype=torch.float32), "b": torch.zeros(2, dtype=torch.bfloat16)}
    base = tensors_checksum(t)
    assert tensors_checksum(dict(t)) == base
    assert tensors_checksum({"a2": t["a"], "b": t["b"]}) != base
    assert tensors_checksum({"a": t["a"].reshape(2, 3), "b": t["b"]}) != base
    assert tensors_checksum({"a": t["a"].to(torch.int32).view(torch.float32), "b": t["b"]}) != base
    assert tensors_checksum({"a": t["a"], "b": t["b"].to(torch.float16)}) != base
    assert tensors_checksum({"a": t["a"] + 1e-6, "b": t["b"]}) != base


def test_a_damaged_payload_with_an_intact_header_is_refused_naming_the_file(trained, tmp_path, debug_base):
    _, ck = trained
    damaged = tmp_path / "ck"
    shutil.copytree(ck, damaged)
    _damage_payload(damaged / "shortcut.safetensors")
    with pytest.raises(CheckpointError, match="shortcut.safetensors: its tensors do not match the checksum"):
        load_shortcut(damaged, debug_base)
    res = runner.invoke(app, ["generate", *COMMON, "--prompt", "a large red circle", "--shortcut", str(damaged),
                              "--budget", "2", "--out", str(tmp_path / "img")])
    _one_line(res, str(damaged / "shortcut.safetensors"), "checksum")
    assert not list((tmp_path / "img").glob("*.png"))


def test_train_init_from_a_damaged_checkpoint_is_one_line(trained, tmp_path):
    store, ck = trained
    damaged = tmp_path / "ck"
    shutil.copytree(ck, damaged)
    _damage_payload(damaged / "shortcut.safetensors")
    res = runner.invoke(app, ["train", *COMMON, "--store", str(store), "--init", str(damaged),
                              "--out", str(tmp_path / "o"), "--max-steps", "2"])
    _one_line(res, str(damaged / "shortcut.safetensors"), "checksum")
    assert not (tmp_path / "o" / "shortcut.safetensors").exists()


def test_bench_with_a_damaged_checkpoint_is_one_line(trained, tmp_path):
    _, ck = trained
    damaged = tmp_path / "ck"
    shutil.copytree(ck, damaged)
    _damage_payload(damaged / "shortcut.safetensors")
    res = runner.invoke(app, ["bench", *COMMON, "--shortcut", str(damaged), "--methods", "shortcut", "--budgets", "2",
                              "--num-samples", "2", "--repeats", "1", "--out", str(tmp_path / "b")])
    _one_line(res, str(damaged / "shortcut.safetensors"), "checksum")


def test_a_checkpoint_without_a_checksum_still_loads(trained, tmp_path, debug_base):
    _, ck = trained
    old = tmp_path / "old"
    shutil.copytree(ck, old)
    meta = json.loads((old / "config.json").read_text())
    del meta[CHECKSUM_KEY]
    (old / "config.json").write_text(json.dumps(meta))
    model, _ = load_shortcut(old, debug_base)
    _damage_payload(old / "shortcut.safetensors")  # nothing to check it against: it loads (as before)
    load_shortcut(old, debug_base)


def test_the_shipped_checkpoint_carries_a_checksum_that_matches_its_tensors():
    from safetensors.torch import load_file

    meta = json.loads((SHIPPED / "config.json").read_text())
    assert meta[CHECKSUM_KEY] == tensors_checksum(load_file(SHIPPED / "shortcut.safetensors"))
    model, loaded = load_shortcut(SHIPPED)
    assert loaded["step"] == 6000
