"""`migmcut shortcut convert`: the paper's released .pth as a migmcut checkpoint directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from migmcut.cli.common import DeviceOpt, JsonOpt, PresetOpt, RecipeOpt, SetOpt, emit, handle_errors, load, results

app = typer.Typer(help="Work with shortcut checkpoints.", no_args_is_help=True)


@app.command("convert")
@handle_errors
def convert(
    release: Annotated[Path, typer.Argument(help="The released .pth (maskgit-shortcut.pth, dimoo-shortcut.pth).",
                                            show_default=False)],
    out: Annotated[Path, typer.Option(help="Directory for shortcut.safetensors + config.json.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty --out.")] = False,
    recipe: RecipeOpt = "tiny-shapes",
    set_: SetOpt = None,
    preset: PresetOpt = None,
    device: DeviceOpt = None,
    json_: JsonOpt = False,
):
    """Write a released shortcut in migmcut's own format, for the recipe's base (whose fingerprint it records)."""
    from migmcut.base import load_base
    from migmcut.shortcut import convert_released

    rec = load(recipe, set_, preset)
    path = convert_released(release, load_base(rec.base, device or "cpu"), out, overwrite)
    emit(json_, {"shortcut": str(path)})
    if not json_:
        results.print(f"wrote {path} (shortcut.safetensors, config.json)", highlight=False)
