"""vanilla: every step is a full base call (the front every other method is judged against)."""

from __future__ import annotations

from migmcut.methods import Method
from migmcut.policies import FullPolicy


class Vanilla(Method):
    name = "vanilla"
    summary = "every step a full base call"
    budget = "none"
    colour = "tab:blue"

    def full_steps(self, steps, budget, knobs, rounding):
        return list(range(steps))

    def policy(self, full_steps, *, shortcut, counts, knobs):
        return FullPolicy()


METHOD = Vanilla()
