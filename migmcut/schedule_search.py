"""Rollout errors of the shortcut (and of the cache) on recorded trajectories, and schedule search.

A budget of B full steps out of N splits the steps into B segments [s, e): a full base call at
s, then e - s - 1 shortcut steps, each from the last predicted features and the tokens just
fixed. The uniform placement (`placement.budget_schedule`) ignores where the shortcut is
accurate; `search_schedule` instead picks the segments minimising the summed rollout error,
measured offline on a store's validation trajectories:

    err[s, k] = error of the features at step s + k after a full step at s and k shortcut steps
                (tokens fixed at each step taken from the recording: teacher forcing on tokens)

Errors are over the positions still masked at step s + k's input (where its logits are read
from), averaged over trajectories: `mse` and `cos` (cosine similarity) of the features, per
CFG branch; `top1` and `kl` of the distribution the sampler draws from there (the base head's
logits, CFG-guided with the store's sampler settings at step s + k, at its temperature): argmax
agreement and KL(true || predicted). The search objective is `mse`: a segment [s, e) costs
sum_{k=1..e-s-1} mse[s, k]. The features of the first steps move ~30x more than the last ones,
so this places full steps early, where the image's layout is decided; on tiny-shapes that beat
both the uniform placement and a KL x tokens-fixed objective in sampled quality (README). The
segments are additive, so dynamic programming over (segments used, end position) finds the
exact optimum in O(B N^2): never worse than uniform on this objective.

Searched schedules are saved beside the shortcut checkpoint (`migmcut.placement.save_schedules`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from migmcut.errors import UserError
from migmcut.placement import budget_schedule
from migmcut.shortcut import ShortcutInputs, pair_conditions

METRICS = ("mse", "cos", "top1", "kl")
OBJECTIVE_TEXT = "summed rollout MSE over skipped steps"


@dataclass
class RolloutErrors:
    """err[s, k] for s in [0, N), k in [1, N - s) (NaN elsewhere; column 0 unused)."""

    steps: int
    mse: np.ndarray
    cos: np.ndarray
    top1: np.ndarray
    kl: np.ndarray
    trajectories: int = 0

    def by_k(self, name: str) -> np.ndarray:
        """Mean over start steps of the k-step error, k = 1 .. N-1."""
        a = getattr(self, name)
        return np.array([np.nanmean(a[: self.steps - k, k]) for k in range(1, self.steps)])

    def one_step(self, name: str) -> np.ndarray:
        """One-step error of predicting step t+1 from recorded step t, t = 0 .. N-2."""
        return getattr(self, name)[: self.steps - 1, 1].copy()

    def to_dict(self) -> dict:
        fix = lambda a: [None if not np.isfinite(v) else round(float(v), 6) for v in a]  # noqa: E731
        return {
            "one_step": {m: fix(self.one_step(m)) for m in METRICS},
            "k_step": {m: fix(self.by_k(m)) for m in METRICS},
        }


def _new_tokens(tokens: torch.Tensor, order: torch.Tensor, t: int):
    """Ids, positions and validity mask (padded to the largest count) of the tokens fixed at step t."""
    fixed = order == t
    counts = fixed.sum(1)
    M = int(counts.max().item()) if len(counts) else 0
    pos = torch.zeros(len(tokens), M, dtype=torch.long)
    valid = torch.zeros(len(tokens), M, dtype=torch.bool)
    for i in range(len(tokens)):
        p = fixed[i].nonzero().flatten()
        pos[i, : len(p)], valid[i, : len(p)] = p, True
    return tokens.gather(1, pos), pos, valid


def _sampler_logp(base, feats: torch.Tensor, mask: torch.Tensor, branches: int, sampler, t: int) -> torch.Tensor:
    """Log-probabilities the sampler draws from at step t, at the masked positions: the base head's
    logits, guided as (1 + w_t) l_cond - w_t l_uncond when the store holds both CFG branches."""
    logits = base.head(feats.to(base.device)).float()  # (n * branches, L, K), trajectory-major
    if branches == 2:
        logits = logits.view(-1, 2, *logits.shape[1:])
        w = sampler.cfg_weight(t)
        logits = (1 + w) * logits[:, 0] - w * logits[:, 1]
        mask = mask.view(-1, 2, mask.shape[-1])[:, 0]
    return F.log_softmax(logits[mask.to(logits.device)] / max(sampler.temperature, 1e-6), -1)


@torch.no_grad()
def rollout_errors(store, indices, base, shortcut=None, *, device="cpu", chunk: int = 8) -> dict[str, RolloutErrors]:
    """err[s, k] of `shortcut` (key "shortcut", when given) and of the identity ("cache") on `indices`."""
    N = store.steps
    names = ["cache"] + (["shortcut"] if shortcut is not None else [])
    sums = {n: {m: np.zeros((N, N)) for m in METRICS} for n in names}
    weight = np.zeros((N, N))
    indices = [int(i) for i in indices]
    if not indices:
        raise UserError("no validation trajectories to measure rollout errors on: record more or raise the val fraction")
    net = None if shortcut is None else shortcut.to(device=device, dtype=torch.float32).eval()
    sampler = store.recipe().sampler
    inputs = ShortcutInputs(base, device)  # looks up the grid position embeddings once
    for lo in range(0, len(indices), chunk):
        trajs = [store.read(i) for i in indices[lo : lo + chunk]]
        feats = torch.stack([t["features"] for t in trajs]).to(device)  # (n, br, N, L, D)
        n, br = feats.shape[:2]
        feats = feats.flatten(0, 1)  # (n*br, N, L, D), trajectory-major
        tokens = torch.stack([t["tokens"] for t in trajs]).repeat_interleave(br, 0)
        order = torch.stack([t["order"] for t in trajs]).repeat_interleave(br, 0)
        conds = [t["condition"] for t in trajs for _ in range(br)]
        branch = torch.arange(br).repeat(n)
        conditioned = inputs.condition(pair_conditions(base, conds, branch))
        steps_in = []  # the shortcut's inputs for the tokens fixed at each step t
        for t in range(N - 1):
            ids, pos, valid = _new_tokens(tokens, order, t)
            steps_in.append(inputs.tokens(ids, pos, valid, (order > t).float().mean(1)))
        for s in range(N - 1):
            h_sc = feats[:, s]
            for k in range(1, N - s):
                t = s + k
                target = feats[:, t]
                mask = (order >= t).to(device)
                m = mask.sum().item()
                if m == 0:
                    continue
                if net is not None:
                    h_sc = net(h_sc, **steps_in[t - 1], **conditioned)
                true_logp = _sampler_logp(base, target, mask, br, sampler, t)
                true_top = true_logp.argmax(-1)
                preds = {"cache": feats[:, s]}
                if net is not None:
                    preds["shortcut"] = h_sc
                for name, pred in preds.items():
                    mse = ((pred - target).pow(2).mean(-1) * mask).sum().item() / m
                    cos = (F.cosine_similarity(pred, target, dim=-1) * mask).sum().item() / m
                    logp = _sampler_logp(base, pred, mask, br, sampler, t)
                    top = (logp.argmax(-1) == true_top).float().mean().item()
                    kl = (true_logp.exp() * (true_logp - logp)).sum(-1).mean().item()
                    sums[name]["mse"][s, k] += mse * m
                    sums[name]["cos"][s, k] += cos * m
                    sums[name]["top1"][s, k] += top * m
                    sums[name]["kl"][s, k] += kl * m
                weight[s, k] += m
    out = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for name in names:
            arrays = {m: np.where(weight > 0, sums[name][m] / np.maximum(weight, 1), np.nan) for m in sums[name]}
            out[name] = RolloutErrors(N, **arrays, trajectories=len(indices))
    return out


def segment_costs(err: np.ndarray) -> np.ndarray:
    """C[a, b] = sum_{k=1..b-a-1} err[a, k]: cost of the segment [a, b) (full at a), b in (a, N]."""
    N = err.shape[0]
    e = np.nan_to_num(err, nan=0.0)
    C = np.full((N, N + 1), np.inf)
    for a in range(N):
        C[a, a + 1] = 0.0
        for b in range(a + 2, N + 1):
            C[a, b] = C[a, b - 1] + e[a, b - 1 - a]
    return C


def schedule_cost(err: np.ndarray, full_steps: list[int]) -> float:
    """The objective of a schedule: summed rollout error of its segments."""
    N = err.shape[0]
    C = segment_costs(err)
    bounds = list(full_steps) + [N]
    return float(sum(C[a, b] for a, b in zip(bounds[:-1], bounds[1:])))


def search_schedule(err: np.ndarray, budget: int) -> tuple[list[int], float]:
    """The B full steps (0 first, increasing) minimising `schedule_cost`, by dynamic programming."""
    N = err.shape[0]
    if not 1 <= budget <= N:
        raise UserError(f"budget must be between 1 and the step count ({N}), got {budget}")
    C = segment_costs(err)
    best = np.full((budget + 1, N + 1), np.inf)
    arg = np.zeros((budget + 1, N + 1), dtype=np.int64)
    best[1, 1:] = C[0, 1:]
    for j in range(2, budget + 1):
        for b in range(j, N + 1):
            cand = best[j - 1, j - 1 : b] + C[j - 1 : b, b]
            a = int(np.argmin(cand))
            best[j, b], arg[j, b] = cand[a], a + j - 1
    full, b = [], N
    for j in range(budget, 1, -1):
        a = int(arg[j, b])
        full.append(a)
        b = a
    full.append(0)
    return sorted(full), float(best[budget, N])


# ------------------------------------------------------------------------ saving and loading


@dataclass
class SearchResult:
    steps: int
    budget: int
    full_steps: list[int]
    objective: float
    uniform_steps: list[int]
    uniform_objective: float
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "full_steps": self.full_steps,
            "objective": round(self.objective, 8),
            "uniform": {"full_steps": self.uniform_steps, "objective": round(self.uniform_objective, 8)},
            **self.extra,
        }


def search(errors: RolloutErrors, budgets: list[int]) -> list[SearchResult]:
    out = []
    for B in budgets:
        full, cost = search_schedule(errors.mse, B)
        uniform = budget_schedule(errors.steps, B)
        out.append(SearchResult(errors.steps, B, full, cost, uniform, schedule_cost(errors.mse, uniform)))
    return out


def table(results: list[SearchResult]) -> dict[int, dict[int, dict]]:
    """Search results as `placement.save_schedules` keeps them: {N: {B: entry}}."""
    out: dict[int, dict[int, dict]] = {}
    for r in results:
        out.setdefault(r.steps, {})[r.budget] = r.to_dict()
    return out
