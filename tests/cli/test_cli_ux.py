"""What a user sees around the results: help texts, progress off a terminal, messages for wrong paths."""

import pytest
from typer.testing import CliRunner

from migmcut.cli.main import app

runner = CliRunner()

COMMANDS = [[], ["generate"], ["record"], ["train"], ["bench"], ["store"], ["store", "info"], ["store", "verify"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "migmcut")
def test_help_shows_no_type_beside_on_off_flags(command):
    res = runner.invoke(app, [*command, "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "--help" in res.stdout and "<bool>" not in res.stdout, res.stdout
    if command in (["generate"], ["bench"], ["train"], ["record"]):
        assert "--json" in res.stdout and "<int>" in res.stdout  # options that take a value keep their type


def one_line_exit_2(res) -> str:
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


def test_a_recipe_directory_is_called_a_directory(tmp_path):
    line = one_line_exit_2(runner.invoke(app, ["generate", "--recipe", str(tmp_path), "--prompt", "a red circle",
                                               "--out", str(tmp_path / "o")]))
    assert "is a directory" in line and "does not exist" not in line and "tiny-shapes" in line, line
    assert not (tmp_path / "o").exists()


def test_an_empty_or_truncated_maskgit_checkpoint_says_so_and_not_trust_pickle(tmp_path):
    import torch

    torch.save({"w": torch.ones(4)}, tmp_path / "whole.pth")
    data = (tmp_path / "whole.pth").read_bytes()
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "half.pth").write_bytes(data[: len(data) // 2])
    for name, words in (("empty.pth", "empty (0 bytes)"), ("half.pth", "truncated or damaged")):
        res = runner.invoke(app, ["generate", "--recipe", "maskgit-imagenet512", "--device", "cpu", "--class", "1",
                                  "--set", f"base.checkpoint={tmp_path / name}", "--set", f"base.vqgan={tmp_path}",
                                  "--out", str(tmp_path / "o")])
        line = one_line_exit_2(res)
        assert words in line and "trust_pickle" not in line, line
    assert not (tmp_path / "o").exists()


def test_a_pickle_of_objects_still_points_to_trust_pickle(tmp_path):
    import torch

    from migmcut.base.statedict import read_tensors
    from migmcut.errors import CheckpointError

    torch.save({"w": torch.ones(1), "step": slice(1, 2)}, tmp_path / "objects.pth")
    with pytest.raises(CheckpointError, match=r"--set base.trust_pickle=true") as err:
        read_tensors(tmp_path / "objects.pth", key="base.checkpoint")
    assert "\x1b" not in str(err.value)  # torch's terminal escapes are not repeated


@pytest.mark.parametrize("recipe, condition, key", [
    ("maskgit-imagenet512", ["--class", "1"], "base.checkpoint"),
    ("dimoo-t2i", ["--prompt", "a cat"], "base.model"),
    ("amused-256", ["--prompt", "a cat"], "base.model"),
    ("amused-512", ["--prompt", "a cat"], "base.model"),
])
def test_a_real_model_recipe_without_weights_names_the_key_and_where_the_files_come_from(tmp_path, recipe,
                                                                                        condition, key):
    line = one_line_exit_2(runner.invoke(app, ["generate", "--recipe", recipe, "--device", "cpu", *condition,
                                               "--out", str(tmp_path / "o")]))
    assert f"--set {key}=PATH" in line and "docs/real-models.md" in line, line
    assert not (tmp_path / "o").exists()
