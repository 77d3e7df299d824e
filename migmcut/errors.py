"""User errors: bad input that the CLI reports as one line and exit code 2.

A message names the parameter it is about with `arg(name, value)`: the library renders it as
`name=value` (what a Python caller passed), the CLI as `--name value` (what was typed), so the
library never speaks of flags and the command line still does:

    raise UserError(f"{arg('budget', 99)} must be between 1 and the step count (16)")
    str(err)                 # "budget=99 must be between 1 and the step count (16)"
    err.render(cli_arg)      # "--budget 99 must be between 1 and the step count (16)"
"""

from __future__ import annotations

import re
from collections.abc import Callable

_ARG = re.compile("\x00([^\x00\x01]*)\x01([^\x00]*)\x00")


_SWITCH = "\x02"  # arg(name, True): an on/off parameter, `name=True` / `--name`


def arg(name: str, value=None) -> str:
    """Parameter `name` (and the value given, or True for a switch) inside a UserError message."""
    text = _SWITCH if value is True else "" if value is None else value
    return f"\x00{name}\x01{text}\x00"


def python_arg(name: str, value: str | bool) -> str:
    return f"{name}={value}" if value != "" else name


class UserError(Exception):
    """Something the user gave is wrong; the message says what and what to do."""

    @property
    def params(self) -> list[str]:
        """The parameters the message names, in order."""
        return [m.group(1) for m in _ARG.finditer(str(self.args[0]) if self.args else "")]

    def render(self, name_arg: Callable[[str, str | bool], str] = python_arg) -> str:
        """The message, each parameter written by `name_arg(name, value)` (value "" if none given, True for a switch)."""
        text = str(self.args[0]) if self.args else ""
        return _ARG.sub(lambda m: name_arg(m.group(1), True if m.group(2) == _SWITCH else m.group(2)), text)

    def __str__(self) -> str:
        return self.render()


class RecipeError(UserError):
    pass


class StoreError(UserError):
    pass


class CheckpointError(UserError):
    pass


def quote(text, limit: int = 60) -> str:
    """User input quoted in a message, shortened to `limit` characters ("…" marks the cut)."""
    text = str(text)
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def check_range(name: str, value, low, high, *, low_open: bool = False) -> None:
    """Numeric parameter `name`: `low <= value <= high` (`low < value` if open), else a UserError naming it."""
    if value is None:
        return
    if not ((low < value if low_open else low <= value) and value <= high):  # NaN fails both
        raise UserError(f"{arg(name)} must be {'>' if low_open else '>='} {low} and <= {high}, got {value}")


SEED_MAX = 2**32 - 1
COUNT_MAX = 10**9  # trajectories, steps, images ...: anything above is a typo
BATCH_MAX = 2**16
