"""User errors: bad input that the CLI reports as one line and exit code 2.

A message names the parameter it is about with `arg(name, value)`: the library renders it as
`name=value` (what a Python caller passed), the CLI as `--name value` (what was typed), so the
library never speaks of flags and the command line still does:

    raise UserError(f"{arg('budget', 99)} must be between 1 and the step count (16)")
    str(err)                 # "budget=99 must be between 1 and the step count (16)"
    err.render(cli_arg)      # "--budget 99 must be between 1 and the step count (16)"
"""

from __future__ import annotations

import functools
import inspect
import numbers
import re
import types
import typing
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


class Interrupted(KeyboardInterrupt):
    """A job stopped by SIGINT / SIGTERM after keeping its work; the message says how to go on (the
    CLI exits with 128 + the signal's number). A KeyboardInterrupt, so code that stops on Ctrl-C still does."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    params, render, __str__ = UserError.params, UserError.render, UserError.__str__


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


def check_range(name: str, value, low, high, *, low_open: bool = False, integer: bool | None = None) -> None:
    """Numeric parameter `name`: a number with `low <= value <= high` (`low < value` if open), and an
    integer where `integer` (default: where both bounds are ints), else a UserError naming it.
    Every function's numeric parameters are checked here, so a wrong type is never a TypeError later."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UserError(f"{arg(name, shown(value))} must be a number, got {type(value).__name__}")
    if not ((low < value if low_open else low <= value) and value <= high):  # NaN fails both
        raise UserError(f"{arg(name)} must be {'>' if low_open else '>='} {low} and <= {high}, got {value}")
    if integer is None:
        integer = isinstance(low, int) and isinstance(high, int)
    if integer and not isinstance(value, numbers.Integral):
        raise UserError(f"{arg(name, shown(value))} must be an integer, got {type(value).__name__}")


def shown(value, limit: int = 40) -> str:
    """A Python value as a message shows it: its repr, shortened ("…" marks the cut)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_call(fn: Callable, args: tuple, kwargs: dict) -> None:
    """The arguments of a call of public API function `fn` (`migmcut.record(...)` & co), before it
    runs: a missing, extra or unknown argument, or None where the parameter takes no None, is a
    UserError naming it, never a TypeError from deep inside. (Numbers: `check_range`; values: each
    function's own checks.)"""
    signature = inspect.signature(fn)
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as err:
        raise UserError(f"{fn.__name__}(): {err}") from None
    for name, value in bound.arguments.items():
        param = signature.parameters[name]
        if value is None and param.default is not None and not _takes_none(fn, param):
            wanted = param.annotation if isinstance(param.annotation, str) else getattr(param.annotation, "__name__", "")
            raise UserError(f"{arg(name, 'None')}: {fn.__name__} needs a value here" + (f" ({wanted})" if wanted else ""))


def api(fn: Callable) -> Callable:
    """Marks a public API function (`migmcut.generate` & co): its arguments are checked by `check_call`
    before it runs, so a wrong call is a UserError naming the argument."""

    @functools.wraps(fn)
    def checked(*args, **kwargs):
        check_call(fn, args, kwargs)
        return fn(*args, **kwargs)

    return checked


def _takes_none(fn: Callable, param) -> bool:
    """Whether `param`'s annotation admits None (no annotation, or one that cannot be read: yes)."""
    hint = param.annotation
    if hint is inspect.Parameter.empty:
        return True
    if isinstance(hint, str):  # `from __future__ import annotations`
        try:
            hint = eval(hint, getattr(fn, "__globals__", {}))  # noqa: S307 - the function's own annotation
        except Exception:  # noqa: BLE001 - a name only imported for type checkers
            return "None" in param.annotation or "Optional" in param.annotation or "Any" in param.annotation
    if hint is None or hint is type(None) or hint is typing.Any:
        return True
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_takes_none(fn, param.replace(annotation=h)) for h in typing.get_args(hint))
    return False


SEED_MAX = 2**32 - 1
COUNT_MAX = 10**9  # trajectories, steps, images ...: anything above is a typo
BATCH_MAX = 2**16
