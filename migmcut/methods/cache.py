"""cache: full base calls at the budget's steps, their features reused unchanged in between."""

from __future__ import annotations

from migmcut.methods import Method
from migmcut.methods.shortcut import BudgetPolicy


class Cache(Method):
    name = "cache"
    summary = "the last full step's features reused in between"
    colour = "tab:orange"

    def policy(self, full_steps, *, shortcut, counts, knobs):
        return BudgetPolicy(full_steps)


METHOD = Cache()
