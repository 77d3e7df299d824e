"""The `migmcut` command: one module per sub-command, registered here."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from typer.core import TyperGroup

from migmcut.cli import bench, generate, record, schedule, shortcut, store, train


def untyped_flags(command, ctx) -> None:
    """On/off flags take no value: show no type beside them in --help (typer prints `<bool>`).

    Applied to `command`, its help option and every sub-command's, before anything is parsed.
    """
    for param in [*command.params, command.get_help_option(ctx)]:
        if param is not None and getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        untyped_flags(sub, ctx)


class Group(TyperGroup):
    def parse_args(self, ctx, args):
        untyped_flags(self, ctx)
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=Group,
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
app.add_typer(shortcut.app, name="shortcut")
app.add_typer(schedule.app, name="schedule")


def run() -> None:
    app()


if __name__ == "__main__":
    run()
