"""adaptive-combined: adaptive tokens per step (as method adaptive) and adaptive full steps with the
shortcut (as method adaptive-shortcut): easy samples finish in fewer steps and run the base only where
the shortcut's prediction calls for it."""

from __future__ import annotations

from dataclasses import dataclass

from migmcut.methods.adaptive import check_probability
from migmcut.methods.adaptive_shortcut import AdaptiveShortcut, AdaptiveShortcutConfig, AdaptiveStepPolicy


@dataclass
class AdaptiveCombinedConfig(AdaptiveShortcutConfig):
    """Recipe section `adaptive-combined`: adaptive-shortcut's knobs, and `tokens`."""

    tokens: float = 0.9  # fix every masked position whose candidate's probability is >= this (at least k_t)

    def validate(self) -> None:
        super().validate()
        check_probability("tokens", self.tokens)


class AdaptiveCombined(AdaptiveShortcut):
    name = "adaptive-combined"
    summary = "adaptive tokens and adaptive full steps with the shortcut"
    knobs = AdaptiveCombinedConfig
    colour = "tab:pink"

    def policy(self, full_steps, *, shortcut, counts, knobs):
        knobs = knobs or self.default_knobs()
        return AdaptiveStepPolicy(shortcut, counts, knobs, tokens=knobs.tokens)


METHOD = AdaptiveCombined()
