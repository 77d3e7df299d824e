"""The `migmcut` command: one module per sub-command, registered here."""

from __future__ import annotations

import typer

from migmcut.cli import bench, generate, record, store, train

app = typer.Typer(
    name="migmcut",
    help="Learned shortcuts for masked image generation models: record, train, generate, bench.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def main() -> None:
    """migmcut: make masked image generation models several times faster with a learned shortcut."""


app.command("generate")(generate.generate)
app.command("record")(record.record)
app.command("train")(train.train)
app.command("bench")(bench.bench)
app.add_typer(store.app, name="store")


def run() -> None:
    app()


if __name__ == "__main__":
    run()
