"""The `migmcut` command: one module per sub-command, registered here."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from migmcut.cli import bench, generate, record, store, train

app = typer.Typer(
    name="migmcut",
    help="Learned shortcuts for masked image generation models: record, train, generate, bench.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"migmcut {version('migmcut')}")
        raise typer.Exit()


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of unexpected errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    """migmcut: make masked image generation models several times faster with a learned shortcut."""
    if debug:
        os.environ["MIGMCUT_DEBUG"] = "1"


app.command("generate")(generate.generate)
app.command("record")(record.record)
app.command("train")(train.train)
app.command("bench")(bench.bench)
app.add_typer(store.app, name="store")


def run() -> None:
    app()


if __name__ == "__main__":
    run()
