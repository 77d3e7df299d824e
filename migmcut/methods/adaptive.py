"""adaptive ("adaptive vanilla"): every step a full base call, and adaptive tokens per step: each
sample fixes every masked position whose candidate's probability clears `adaptive.threshold` (at
least the schedule's k_t), so easy samples finish in fewer steps (Fast-dLLM's confidence threshold)."""

from __future__ import annotations

from dataclasses import dataclass

from migmcut.methods import Method
from migmcut.policies import FullPolicy


def check_probability(name: str, value: float) -> None:
    """A probability threshold knob: 0 < value <= 1 (ValueError naming the knob)."""
    if not 0 < value <= 1:
        raise ValueError(f"{name} must be in (0, 1] (a candidate's probability), got {value}")


@dataclass
class AdaptiveConfig:
    """Recipe section `adaptive`."""

    threshold: float = 0.9  # fix every masked position whose candidate's probability is >= this (at least k_t)

    def validate(self) -> None:
        check_probability("threshold", self.threshold)


class AdaptiveTokens(FullPolicy):
    """Every step a full base call (on the rows still running); each row fixes at least its confident positions."""

    def __init__(self, threshold: float):
        self.threshold = threshold


class Adaptive(Method):
    name = "adaptive"
    summary = "adaptive vanilla: every step full, each sample fixes the positions clearing adaptive.threshold"
    knobs = AdaptiveConfig
    budget = "none"
    adaptive = True
    vanilla_family = True
    colour = "tab:cyan"

    def full_steps(self, steps, budget, knobs, rounding):
        return list(range(steps))

    def policy(self, full_steps, *, shortcut, counts, knobs):
        return AdaptiveTokens((knobs or AdaptiveConfig()).threshold)


METHOD = Adaptive()
