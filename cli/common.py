"""What every command shares: the common options, error handling, output and progress."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time
import traceback
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from migmcut.errors import Interrupted, UserError, arg
from migmcut.files import is_disk_full

console = Console(stderr=True)  # progress, warnings, errors
results = Console(highlight=False, soft_wrap=True)  # human results (stdout; nothing with --json)

# how a library parameter is spelled on the command line, where it is not `--name-with-dashes`
FLAGS = {"overrides": "--set"}


def cli_arg(name: str, value: str | bool) -> str:
    """A parameter named in a library error, as the CLI spells it: `--budget 99`, `--overwrite`."""
    flag = FLAGS.get(name, "--" + name.replace("_", "-"))
    return f"{flag} {value}" if value not in ("", True) else flag


RecipeOpt = Annotated[str, typer.Option("--recipe", "-r", help="Built-in recipe name or a YAML path.")]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a recipe field, e.g. --set sampler.steps=8 (repeatable)."),
]
PresetOpt = Annotated[
    Optional[str],
    typer.Option(help="An operating point the recipe names under presets (e.g. the paper's paper-32-8): "
                      "its overrides, before --set."),
]
DeviceOpt = Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if available).")]
DtypeOpt = Annotated[str, typer.Option(help="auto (bf16 on GPU, fp32 on CPU), fp32, bf16 or fp16.")]
SeedOpt = Annotated[int, typer.Option(help="Run seed; every trajectory's seed derives from it.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout and nothing else.")]


def debug_enabled() -> bool:
    return os.environ.get("MIGMCUT_DEBUG", "") not in ("", "0")


def handle_errors(fn):
    """User errors -> one line on stderr and exit 2; anything else -> exit 1 (traceback with MIGMCUT_DEBUG=1)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except UserError as err:
            _quiet_exit()
            console.print(f"[red]error:[/red] {err.render(cli_arg)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except OSError as err:
            if not is_disk_full(err):
                return _internal(err)
            _quiet_exit()
            console.print(f"[red]error:[/red] no space left on the device ({err.strerror}); nothing half-written "
                          "is left: free some space and run the same command again", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt as err:
            _quiet_exit()
            saved = isinstance(err, Interrupted)  # the job kept its work and says how to go on
            console.print(err.render(cli_arg) if saved else "interrupted", highlight=False, soft_wrap=True)
            raise typer.Exit(err.exit_code if saved else 130) from None
        except Exception as err:  # noqa: BLE001 - the last line of defence
            _internal(err)

    return wrapper


def _quiet_exit() -> None:
    """The command ends on an error it has reported in one line: what the async libraries would print
    on the way out stays unsaid (zarr's writes still in flight when one failed are destroyed with its
    event loop, and asyncio logs each of them with its stack). MIGMCUT_DEBUG=1 keeps it."""
    if debug_enabled():
        return
    logging.getLogger("asyncio").disabled = True
    logging.getLogger("zarr").disabled = True
    sys.unraisablehook = lambda unraisable: None


def _internal(err: BaseException):
    if debug_enabled():
        traceback.print_exc()
    _quiet_exit()
    console.print(
        f"[red]internal error:[/red] {type(err).__name__}: {err} "
        "(run with --debug or MIGMCUT_DEBUG=1 for the traceback)",
        highlight=False,
        soft_wrap=True,
    )
    raise typer.Exit(1) from None


def parse_int_list(text: str | None, name: str) -> list[int] | None:
    """Comma-separated integers ("2,4,8") typed for option `name`, as the list the library takes (None stays None)."""
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{arg(name, repr(text))}: expected comma-separated integers, e.g. 2,4,8") from None
    if not values:
        raise UserError(f"{arg(name)} is empty: give at least one value")
    return values


def parse_names(text: str | None) -> list[str] | None:
    """Comma-separated names ("cache,shortcut") typed for an option, as a list (None stays None)."""
    return None if text is None else [m.strip() for m in text.split(",") if m.strip()]


def load(recipe: str, overrides: list[str] | None, preset: str | None = None):
    from migmcut.recipe import load_recipe

    return load_recipe(recipe, overrides or [], preset)


def emit(as_json: bool, payload: dict) -> None:
    if as_json:
        sys.stdout.write(json.dumps(payload) + "\n")
        sys.stdout.flush()


class PlainProgress:
    """Off a terminal: a plain line on stderr every 10% or 30 s per task (the `Progress` calls used here)."""

    def __init__(self, every_s: float = 30.0):
        self.every_s, self.tasks = every_s, {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, description: str, total=None) -> int:
        self.tasks[len(self.tasks)] = {"description": description, "total": total, "completed": 0,
                                       "shown": 0, "at": time.monotonic()}
        return len(self.tasks) - 1

    def advance(self, task: int, n=1) -> None:
        self.update(task, completed=self.tasks[task]["completed"] + n)

    def update(self, task: int, *, completed=None, description=None, total=None) -> None:
        t = self.tasks[task]
        if completed is not None and completed < t["completed"]:  # a new phase counts from the start again
            t["shown"], t["at"] = 0, time.monotonic()
        t.update({k: v for k, v in (("completed", completed), ("description", description), ("total", total))
                  if v is not None})
        now, done, total = time.monotonic(), t["completed"], t["total"]
        tenth = total and int(10 * done / total) > int(10 * t["shown"] / total)
        if done > t["shown"] and (tenth or now - t["at"] >= self.every_s):
            console.print(f"{t['description']}: {done}" + (f"/{total}" if total else ""), highlight=False)
            t["shown"], t["at"] = done, now


def progress(enabled: bool, plain: bool = False):
    """A progress bar on a terminal; off one, plain lines on stderr if `plain` (long jobs); nothing if not `enabled`."""
    if enabled and plain and not console.is_terminal:
        return PlainProgress()
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled or not console.is_terminal,
        transient=True,
    )
