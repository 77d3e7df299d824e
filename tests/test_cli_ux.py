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
