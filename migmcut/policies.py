"""Step policies: where a sampling step gets its logits and features from.

- `FullPolicy`: every step is a full base call (vanilla sampling).
- `BudgetPolicy(full_steps, shortcut)`: full base calls only at `full_steps`; every other step
  predicts the features from the last (full or predicted) ones and the tokens just fixed, with
  the shortcut network (`kind == "shortcut"`) or by reusing them unchanged (`shortcut=None`:
  the feature cache, `kind == "cache"`). Logits at skipped steps come from the base's own head,
  which the sampler runs only at the still-masked positions.
- Partial evaluation (bases with `supports_partial`; docs/partial-evaluation.md has the reference
  code these follow, and every place where migmcut had to choose):
  - `RecapPolicy` (ReCAP): a full step keeps every layer's K/V and the sampler's ranking of the
    masked positions; each later step up to the next full step fixes the next chunk of that
    ranking, from logits of the group's positions recomputed against the cached context.
  - `MLCachePolicy` (Lumina-DiMOO's ML-Cache): between refreshes, recompute the positions whose
    last logits had the lowest maximum, write their K/V back, and sample from the mix of fresh and
    cached logits.
  - `HybridPolicy`: the shortcut carries the whole feature map forward; the positions the sampler
    ranks first from it are evaluated exactly against the cached context, and fixed from those logits.

Every policy's `step(base, state)` returns a `Proposal`; a policy's `after(event)`, where it has
one, sees each step's `sampler.StepEvent`. Where full steps go:
`placement.budget_schedule` (shortcut, cache, hybrid), `recap_schedule`, `mlcache_schedule`; `full_steps_for`
picks the one a method uses, `build` makes the policy (generate and bench both call these two).
Knobs: `RecapConfig`, `MLCacheConfig`, `HybridConfig` (the recipe's `recap`, `mlcache`, `hybrid`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from migmcut.errors import UserError
from migmcut.placement import budget_schedule
from migmcut.recipe import HybridConfig, MLCacheConfig, RecapConfig
from migmcut.shortcut import ShortcutInputs


@dataclass
class Proposal:
    """What a policy hands the sampler for step t.

    logits / features: (B * branches, L, .) over the whole grid, or over `at` only. With logits
    None the sampler runs the base's head on the features where it reads logits.
    at: (B, n) masked grid positions: the logits are there and the sampler fixes only among them.
    refine: positions (B, m) -> exact logits (B * branches, m, K) there, for the m = ceil(refine_factor * k_t)
    positions the sampler ranks first from this proposal's logits.
    calls: what the step ran, each counted once in `SampleResult.counts` (default: its kind alone);
    a hybrid step runs the shortcut and a partial evaluation: ("shortcut", "hybrid").
    """

    kind: str  # "full" | "shortcut" | "cache" | "recap" | "mlcache" | "hybrid"
    logits: torch.Tensor | None = None
    features: torch.Tensor | None = None
    at: torch.Tensor | None = None
    refine: Callable[[torch.Tensor], torch.Tensor] | None = None
    refine_factor: float = 1.0
    calls: tuple[str, ...] | None = None

    @property
    def counted(self) -> tuple[str, ...]:
        return (self.kind,) if self.calls is None else self.calls


METHODS = ("vanilla", "cache", "shortcut", "recap", "mlcache", "hybrid")
PARTIAL = ("recap", "mlcache", "hybrid")  # need a base with partial evaluation
NEEDS_SHORTCUT = ("shortcut", "hybrid")


@dataclass
class PolicyKnobs:
    recap: RecapConfig = field(default_factory=RecapConfig)
    mlcache: MLCacheConfig = field(default_factory=MLCacheConfig)
    hybrid: HybridConfig = field(default_factory=HybridConfig)

    @classmethod
    def of(cls, recipe) -> PolicyKnobs:
        return cls(recipe.recap, recipe.mlcache, recipe.hybrid)


def full_steps_for(method: str, steps: int, budget: int | None, knobs: PolicyKnobs | None = None,
                   rounding: str = "half-up") -> list[int]:
    """The steps that run the base for `method` at N = `steps` with `budget` full steps (ValueError
    where the method cannot reach it). Only mlcache has a schedule of its own without a budget."""
    knobs = knobs or PolicyKnobs()
    if method == "vanilla":
        return list(range(steps))
    if method == "mlcache":
        m = knobs.mlcache
        return mlcache_schedule(steps, m.warmup_ratio, m.refresh_interval, budget)
    if budget is None:
        raise ValueError(f"method {method} needs a budget (full base steps out of {steps})")
    if method == "recap":
        return recap_schedule(steps, budget, knobs.recap.local_for(steps, budget))
    return budget_schedule(steps, budget, rounding)


def build(method: str, full_steps: list[int], *, shortcut: torch.nn.Module | None = None,
          counts: list[int] | None = None, knobs: PolicyKnobs | None = None):
    """A fresh policy (one per sampled batch) for `method` with the base called at `full_steps`;
    `counts`: the sampler's tokens fixed per step (recap needs them)."""
    knobs = knobs or PolicyKnobs()
    if method == "vanilla":
        return FullPolicy()
    if method == "cache":
        return BudgetPolicy(full_steps)
    if method in NEEDS_SHORTCUT and shortcut is None:
        raise ValueError(f"method {method} needs a shortcut")
    if method == "shortcut":
        return BudgetPolicy(full_steps, shortcut)
    if method == "recap":
        return RecapPolicy(full_steps, counts)
    if method == "mlcache":
        return MLCachePolicy(full_steps, knobs.mlcache.cache_ratio)
    if method == "hybrid":
        h = knobs.hybrid
        return HybridPolicy(full_steps, shortcut, h.candidates, h.refresh_new, h.context)
    raise ValueError(f"unknown method {method!r} (choose from {', '.join(METHODS)})")


def recap_schedule(steps: int, budget: int, local: int = 1) -> list[int]:
    """ReCAP's full steps: P full steps, then groups of one full step and `local` local steps (the
    last group shortened), P the largest that makes `budget` full steps in all (two P can: the
    larger leaves whole groups, as each published (N, P) does)."""
    if local < 1:
        raise ValueError(f"recap local steps per full step must be >= 1, got {local}")
    least = math.ceil(steps / (local + 1))
    if not least <= budget <= steps:
        raise ValueError(f"recap with {local} local step(s) per full step needs a budget between {least} "
                         f"and {steps} at {steps} steps, got {budget}")
    prefix = max(p for p in range(steps + 1) if p + math.ceil((steps - p) / (local + 1)) == budget)
    return list(range(prefix)) + list(range(prefix, steps, local + 1))


def mlcache_schedule(steps: int, warmup_ratio: float = 0.3, refresh_interval: int = 5,
                     budget: int | None = None) -> list[int]:
    """ML-Cache's full steps: s <= w or (s - w) % refresh_interval == 0, w = int(steps * warmup_ratio)
    (Lumina-DiMOO's rule); with `budget`, the warm-up w that makes that many full steps instead."""
    if refresh_interval < 1:
        raise ValueError(f"mlcache refresh interval must be >= 1, got {refresh_interval}")

    def full(w: int) -> list[int]:
        return [s for s in range(steps) if s <= w or (s - w) % refresh_interval == 0]

    if budget is None:
        return full(int(steps * warmup_ratio))
    least = len(full(0))
    if not least <= budget <= steps:
        raise ValueError(f"mlcache with refresh interval {refresh_interval} needs a budget between {least} "
                         f"and {steps} at {steps} steps, got {budget}")
    return full(next(w for w in range(steps) if len(full(w)) == budget))


class FullPolicy:
    """Every step is a full base call."""

    def step(self, base, state):
        logits, features = base(branch_rows(state), state.cond)
        return Proposal("full", logits, features)


class BudgetPolicy:
    """Full base calls at `full_steps`; the shortcut (or the identity: a cache) in between."""

    def __init__(self, full_steps: list[int], shortcut: torch.nn.Module | None = None):
        if not full_steps or full_steps[0] != 0:
            raise ValueError("the first step must be a full base call")
        self.full_steps = set(full_steps)
        self.shortcut = shortcut
        self.kind = "cache" if shortcut is None else "shortcut"
        # a shortcut that reads the whole input sequence (the paper's released ones) carries it instead
        self.reads_sequence = getattr(shortcut, "reads_sequence", False)
        self.features = self.sequence = self.rows = self.inputs = self.conditioned = None

    def step(self, base, state):
        if state.t in self.full_steps:
            if self.reads_sequence:
                logits, self.features, self.sequence = base.forward_sequence(branch_rows(state), state.cond)
            else:
                logits, self.features = base(branch_rows(state), state.cond)
            return Proposal("full", logits, self.features)
        if self.shortcut is not None:
            self.features = self.predict(base, state, branch_count(state))
        return Proposal(self.kind, None, self.features)  # the sampler runs the head where it reads logits

    def predict(self, base, state, branches: int) -> torch.Tensor:
        if self.reads_sequence:
            self.sequence = self.shortcut.advance(base, self.sequence, branch_rows(state), state.cond,
                                                  state.new_tokens.repeat(branches, 1), state.mask_ratio)
            if self.rows is None:  # where the image rows sit in the sequence: the same at every step
                grid = torch.arange(base.num_tokens, device=self.sequence.device).expand(self.sequence.shape[0], -1)
                self.rows = base.image_rows(grid)
            return _rows_of(self.sequence, self.rows)
        return self.shortcut(self.features, **self.step_inputs(base, state, branches))

    def step_inputs(self, base, state, branches: int) -> dict:
        """The shortcut's inputs at step t besides h: the tokens fixed at step t - 1 and the conditions."""
        if self.inputs is None:  # a policy samples one batch: its conditions stay the same
            self.inputs = ShortcutInputs(base, base.device, self.features.dtype)
            self.conditioned = self.inputs.condition(state.cond)
        B = state.tokens.shape[0]
        # every trajectory of a batch fixes the same number of tokens per step
        pos = state.new_tokens.nonzero()[:, 1].view(B, -1).repeat(branches, 1)
        ids = branch_rows(state).gather(1, pos)
        new_mask = torch.ones(pos.shape, dtype=torch.bool, device=pos.device)
        ratio = torch.full((pos.shape[0],), state.mask_ratio, device=pos.device)
        return {**self.inputs.tokens(ids, pos, new_mask, ratio), **self.conditioned}


def branch_count(state) -> int:
    return len(state.cond) // state.tokens.shape[0]


def branch_rows(state) -> torch.Tensor:
    """The base's input rows: the token state once per CFG branch."""
    return state.tokens.repeat(branch_count(state), 1)


def _rows_of(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x (R, T, D) at rows (R, n) -> (R, n, D)."""
    return x.gather(1, rows[..., None].expand(-1, -1, x.shape[-1]))


def _scatter_rows(x: torch.Tensor, positions: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """x (R, L, D) with values (R, n, D) written at positions (R, n), in place."""
    return x.scatter_(1, positions[..., None].expand(-1, -1, x.shape[-1]), values.to(x.dtype))


class RecapPolicy:
    """ReCAP: a full step keeps the K/V cache and the sampler's ranking; the group of positions the
    full step and its local steps fix is the top of that ranking, one chunk of k_t per step. A local
    step recomputes all group positions (decoded or still masked) against the cached context
    (nothing written back) and hands the sampler that step's chunk alone."""

    def __init__(self, full_steps: list[int], counts: list[int]):
        if not full_steps or full_steps[0] != 0:
            raise ValueError("the first step must be a full base call")
        self.full_steps, self.counts = set(full_steps), counts
        self.cache = self.group = None
        self.chunks: dict[int, tuple[int, int]] = {}  # step -> its chunk's slice of the group

    def step(self, base, state):
        if state.t in self.full_steps:
            logits, features, self.cache = base.forward_with_cache(branch_rows(state), state.cond)
            return Proposal("full", logits, features)
        lo, hi = self.chunks[state.t]
        positions = self.group.repeat(branch_count(state), 1)
        logits, features = base.partial_forward(branch_rows(state), state.cond, positions, self.cache, context=True)
        return Proposal("recap", logits[:, lo:hi], features[:, lo:hi], at=self.group[:, lo:hi])

    def after(self, event) -> None:
        if event.kind != "full":
            return
        end = next((s for s in sorted(self.full_steps) if s > event.t), len(self.counts))
        offset, self.chunks = self.counts[event.t], {}
        for s in range(event.t + 1, end):
            self.chunks[s] = (offset, offset + self.counts[s])
            offset += self.counts[s]
        self.group = event.ranked[:, :offset]


class MLCachePolicy:
    """ML-Cache: at a partial step recompute the positions whose logits had the lowest maximum at
    the step before (each branch on its own), write their K/V back into the cache, and hand the
    sampler the cached logits with the fresh ones written in."""

    def __init__(self, full_steps: list[int], cache_ratio: float = 0.9):
        if not full_steps or full_steps[0] != 0:
            raise ValueError("the first step must be a full base call")
        self.full_steps, self.cache_ratio = set(full_steps), cache_ratio
        self.cache = self.logits = self.features = None

    def step(self, base, state):
        if state.t in self.full_steps:
            self.logits, self.features, self.cache = base.forward_with_cache(branch_rows(state), state.cond)
            return Proposal("full", self.logits, self.features)
        L = state.tokens.shape[1]
        # the positions at or below the (1 - cache_ratio) quantile of the max logit: as many as
        # torch.quantile's linear interpolation puts there when the values are distinct
        n = math.floor((1 - self.cache_ratio) * (L - 1) + 1e-9) + 1
        positions = self.logits.max(-1).values.topk(n, dim=-1, largest=False).indices
        logits, features = base.partial_forward(branch_rows(state), state.cond, positions, self.cache, update=True)
        _scatter_rows(self.logits, positions, logits)
        _scatter_rows(self.features, positions, features)
        return Proposal("mlcache", self.logits, self.features)


class HybridPolicy(BudgetPolicy):
    """The shortcut between full steps, with the positions the sampler is about to fix evaluated
    exactly: the sampler ranks every masked position from the shortcut's logits and hands the best
    ceil(candidates * k_t) to `refine`, which recomputes them against the K/V of the last full step
    (with `refresh_new`, the tokens fixed at the step before too, their K/V written back) and writes
    the exact features into the map the shortcut carries on; with `context`, the prompt / condition
    positions are recomputed too (they attend to the image, which changed since the full step)."""

    def __init__(self, full_steps: list[int], shortcut: torch.nn.Module, candidates: float = 2.0,
                 refresh_new: bool = True, context: bool = False):
        super().__init__(full_steps, shortcut)
        if self.reads_sequence:
            raise UserError("hybrid writes exact features into the map the shortcut carries, and a released "
                            "shortcut carries the whole input sequence: use method shortcut with it")
        self.kind, self.candidates, self.refresh_new, self.context = "hybrid", candidates, refresh_new, context
        self.cache = None

    def step(self, base, state):
        if state.t in self.full_steps:
            logits, self.features, self.cache = base.forward_with_cache(branch_rows(state), state.cond)
            return Proposal("full", logits, self.features)
        branches = branch_count(state)
        self.features = self.predict(base, state, branches)
        fresh = state.new_tokens.nonzero()[:, 1].view(state.tokens.shape[0], -1) if self.refresh_new else None

        def refine(where: torch.Tensor) -> torch.Tensor:
            positions = where if fresh is None else torch.cat([fresh, where], 1)
            positions = positions.repeat(branches, 1)
            logits, features = base.partial_forward(branch_rows(state), state.cond, positions, self.cache,
                                                    update=fresh is not None, context=self.context)
            _scatter_rows(self.features, positions, features)
            return logits[:, positions.shape[1] - where.shape[1]:]

        return Proposal("hybrid", None, self.features, refine=refine, refine_factor=self.candidates,
                        calls=("shortcut", "hybrid"))
