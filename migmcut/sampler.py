"""Confidence-based parallel decoding (MaskGIT / Lumina-DiMOO) with per-step policies.

At step t the policy hands the sampler a `policies.Proposal`: features for the current token state (a
full base call, or a shortcut / cache prediction) and the logits, or features alone, and the
sampler runs the head only at the still-masked positions (the only ones it reads). The sampler
draws a candidate for every masked position from the tempered softmax, scores confidence as
log p(candidate) plus Gumbel noise of scale s_t, and fixes the k_t most confident masked
positions. With classifier-free guidance both branches run in one batch and
logits = (1 + w_t) l_cond - w_t l_uncond.

Partial evaluation narrows that: a proposal `at` positions (B, n) holds logits there only, and the
sampler fixes k_t of those (ReCAP's local steps); a proposal with `refine` has the sampler rank
every masked position as above, then hand the ceil(refine_factor * k_t) best to `refine`, which returns
exact logits there, and draw and fix among them with the same random numbers (the hybrid).
After each step the policy's `after(event)` sees the event, whose `ranked` lists the
positions the sampler scored, most confident first.

How each of these is computed is a named setting of `SamplerConfig`; the defaults are the
tiny-shapes sampler (its shipped shortcut was trained on it), the real recipes name their
reference's settings (docs/real-models.md):
- `schedule` (k_t): `schedule.SCHEDULES`; `maskgit`, `dimoo` and `amused` are their reference's integer counts.
- `cfg_schedule` (w_t): linear cfg (t + 1) / N | linear-from-zero cfg t / (N - 1) | constant cfg.
- `cfg_mix`: weighted ((1 + w) l_cond - w l_uncond) | difference (l_uncond + (1 + w) (l_cond - l_uncond),
  AmusedPipeline's `uncond + guidance_scale * (cond - uncond)` with guidance_scale = 1 + w).
- `noise_schedule` (s_t): linear r_temp (1 - t / N) | linear-to-zero r_temp (1 - t / (N - 1)) | constant r_temp
  | linspace `torch.linspace(r_temp, r_temp_end, N)[t]` in float32 (AmusedScheduler's temperatures)
  | cumulative r_temp (1 - 1/N) (1 - 2/N) ... (1 - (t + 1)/N), multiplied up step by step in Python floats
  (MMaDA's `t2i_generate`, which rescales its temperature by (1 - ratio) before each step's noise).
  (At N = 1, where the reference divides by zero, the ramps take their first step's value.)
- `temperature_mode`: divide (softmax(logits / T)) | multiply (softmax(logits * T)).
- `draw` (the candidate): inverse-cdf (one uniform per position against the cumulative softmax) |
  multinomial (`torch.multinomial(p, 1)` as its CPU kernel computes it, argmax p / Exp(1) with an
  (L, K) Exp(1) draw per step and trajectory: AmusedScheduler's draw over the whole grid).
- `confidence`: tempered (log p from the tempered softmax) | untempered (from softmax(logits)) |
  probability (log(softmax(logits).clamp(1e-20)): AmusedScheduler's `mask_by_random_topk`).
- `budget_rounding`: where B full steps go among N (`placement.budget_schedule`): half-up | half-even.
- `timestep` (what the base is told of the step): none | countdown (the conditions of step t carry a
  `timestep` row tensor N - 1 - t, the scheduler timestep `arange(N).flip(0)[t]` that Meissonic's
  transformer is conditioned on; the base reads `cond["timestep"]`).

Adaptive tokens per step (a policy with a `threshold`, e.g. method `adaptive`): each row fixes
max(k_t, n_t) positions, n_t the masked positions whose candidate's probability (the guided, tempered
softmax it was drawn from, without the noise) is >= the threshold, still the top ones by noisy
confidence; rows then hold different numbers of masked positions (the sampler pads `where` and scores
the pads -inf) and a row with nothing masked is finished: from then on the policy sees only the rows
still running (`StepState.rows`), so a finished row costs nothing. Without a threshold every row
fixes k_t and the steps compute exactly what they did before. `SampleResult.per_sample` counts, per
row, the steps it ran and each call it made.

Every random draw of trajectory i comes from its own generator seeded with `seeds[i]`, so a
trajectory does not depend on the batch it ran in.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from migmcut.base.conditions import Conditions
from migmcut.base.interface import BaseModel
from migmcut.policies import FullPolicy, Proposal, branch_index, padded_positions
from migmcut.recipe import SamplerConfig


@dataclass
class StepState:
    """What a policy and the observers see at step t (before its tokens are fixed)."""

    t: int
    tokens: torch.Tensor  # (B, L) current state, mask_id where masked
    cond: Conditions  # B * branches rows, conditional branch first
    new_tokens: torch.Tensor | None  # (B, L) bool: positions fixed at step t-1 (None at t=0)
    mask_ratio: float  # fraction of positions masked at this step's input (its first row's)
    rows: torch.Tensor | None = None  # (B,) the sampled batch's rows these are (None: all of them; adaptive tokens)


@dataclass
class StepEvent:
    """Handed to observers after step t: features used, and what got fixed."""

    t: int
    kind: str  # the policy's Proposal kind
    features: torch.Tensor | None  # (B, branches, L, D); None where the step had no whole feature map
    tokens: torch.Tensor  # (B, L) state after the step
    fixed: torch.Tensor  # (B, L) bool: positions fixed at this step
    mask_ratio: float
    scored: torch.Tensor | None = None  # (B, n) the positions the sampler scored (drew candidates at)
    confidence: torch.Tensor | None = None  # (B, n) their noisy confidence (-inf at pads)
    rows: torch.Tensor | None = None  # the rows that ran (`StepState.rows`): features, scored and confidence are theirs

    @property
    def ranked(self) -> torch.Tensor:
        """(B, n) the scored positions, most confident first (computed on demand: only ReCAP reads it)."""
        return self.scored.gather(1, self.confidence.argsort(dim=-1, descending=True))


@dataclass
class SampleResult:
    tokens: torch.Tensor  # (B, L) final image tokens
    order: torch.Tensor  # (B, L) step at which each position was fixed
    counts: dict = field(default_factory=dict)  # what ran (Proposal.counted: full, shortcut, recap ...) -> steps it ran in
    seconds: float = 0.0
    per_sample: dict = field(default_factory=dict)  # "steps" and each call kind -> (B,) how many each row ran


def _split_branches(x: torch.Tensor, branches: int) -> torch.Tensor:
    """(branches * B, ...) -> (B, branches, ...)."""
    return x.view(branches, -1, *x.shape[1:]).transpose(0, 1)


@torch.no_grad()
def sample(
    base: BaseModel,
    conditions: list,
    seeds: list[int],
    config: SamplerConfig,
    policy=None,
    observers: tuple = (),
) -> SampleResult:
    policy = policy or FullPolicy()
    B, L, device = len(conditions), base.num_tokens, base.device
    if len(seeds) != B:
        raise ValueError("one seed per condition")
    counts_per_step = config.check(L)
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    cond = base.encode_conditions(conditions)
    if config.branches == 2:
        cond = cond.cat(base.null_conditions(B))
    tokens = torch.full((B, L), base.mask_id, dtype=torch.long, device=device)
    order = torch.full((B, L), -1, dtype=torch.long, device=device)
    new_tokens = None
    counts: dict[str, int] = {}
    per_sample = {"steps": torch.zeros(B, dtype=torch.long)}
    threshold = getattr(policy, "threshold", None)  # adaptive tokens: fix at least the confident positions
    start = time.perf_counter()
    for t, k in enumerate(counts_per_step):
        left = (tokens == base.mask_id).sum(1)
        if not left.any():
            break  # every row finished early (adaptive tokens)
        rows = None if left.all() else left.nonzero()[:, 0]  # the rows still running
        now, left = _rows(tokens, rows), _rows(left, rows)
        masked = now == base.mask_id
        cond_t = config.step_conditions(cond if rows is None else cond[branch_index(rows, B, config.branches)], t)
        state = StepState(t, now, cond_t, _rows(new_tokens, rows), masked[0].float().mean().item(), rows)
        out = policy.step(base, state)
        ran = slice(None) if rows is None else rows.cpu()
        per_sample["steps"][ran] += 1
        for call in out.counted:  # a hybrid step counts as a shortcut call and a partial one
            counts[call] = counts.get(call, 0) + 1
            hit = out.ran[call].long().cpu() if out.ran and call in out.ran else 1
            per_sample.setdefault(call, torch.zeros(B, dtype=torch.long))[ran] += hit
        # per-trajectory noise: one uniform per position for the candidate (inverse-CDF draw; for the
        # multinomial draw an Exp(1) per position and code) and one for the confidence, so a
        # trajectory's draws do not depend on its batch
        if config.draw == "multinomial":
            K = base.codebook_size
            u_tok = torch.stack([torch.empty(L, K).exponential_(1, generator=g) for g in gens]).to(device)
        else:
            u_tok = torch.stack([torch.rand(L, generator=g) for g in gens]).to(device)
        u_conf = torch.stack([torch.rand(L, generator=g) for g in gens]).to(device)
        u_tok, u_conf = _rows(u_tok, rows), _rows(u_conf, rows)
        R, pads = now.shape[0], None
        if out.at is not None:
            where, logits = out.at, out.logits
            if where.shape[0] != R or where.shape[1] < k or not masked.gather(1, where).all():
                raise ValueError(f"step {t}: a proposal's `at` must hold >= {k} masked positions per row")
        elif (left == left[0]).all():  # every row has the same number of masked positions: no pads
            where = masked.nonzero()[:, 1].view(R, -1)  # (R, M), ascending
            logits = _logits_at(base, out, where.repeat(config.branches, 1))
        else:  # ragged rows: each row's masked positions, then pads (at L) that are never fixed
            where, valid = padded_positions(masked)
            pads = ~valid
            logits = _logits_at(base, out, where.clamp(max=L - 1).repeat(config.branches, 1))
        candidate, conf, prob = _draw_scored(config, t, logits, where.clamp(max=L - 1), u_tok, u_conf)
        if out.refine is not None and pads is not None:
            raise ValueError(f"step {t}: a proposal with `refine` needs rows with the same number of masked positions")
        if out.refine is not None:  # exact logits where the proposal ranks best, then draw again there
            m = min(max(math.ceil(out.refine_factor * k), k), where.shape[1])
            where = where.gather(1, conf.topk(m, dim=-1).indices)
            candidate, conf, prob = _draw_scored(config, t, out.refine(where), where, u_tok, u_conf)
        if pads is not None:
            conf = conf.masked_fill(pads, -math.inf)
        if threshold is None:
            pick = conf.topk(k, dim=-1).indices
            chosen = torch.ones_like(pick, dtype=torch.bool)
        else:  # at least k_t, and every position as confident as the threshold, within what is left
            confident = (prob >= threshold) if pads is None else (prob >= threshold) & ~pads
            scored = where.shape[1] - (0 if pads is None else pads.sum(1))  # the row's masked positions in `where`
            take = confident.sum(1).clamp(min=k).minimum(torch.as_tensor(scored, device=where.device))
            pick = conf.topk(int(take.max()), dim=-1).indices
            chosen = torch.arange(pick.shape[1], device=pick.device) < take[:, None]
        fixed = _scatter(torch.zeros_like(masked), where.gather(1, pick), chosen)
        now = _scatter(now, where, candidate).where(fixed, now)
        tokens, fixed = _put_rows(tokens, rows, now), _put_rows(torch.zeros_like(tokens, dtype=torch.bool), rows, fixed)
        order = torch.where(fixed, t, order)
        new_tokens = fixed
        whole = out.features is not None and out.at is None  # a feature map over the whole grid
        features = _split_branches(out.features, config.branches) if whole else None
        event = StepEvent(t, out.kind, features, tokens, fixed, state.mask_ratio, where, conf, rows)
        policy.after(event)
        for obs in observers:
            obs(event)
    return SampleResult(tokens, order, counts, time.perf_counter() - start, per_sample)


def _rows(x: torch.Tensor | None, rows: torch.Tensor | None) -> torch.Tensor | None:
    """x at the rows still running (all of x when `rows` is None)."""
    return x if x is None or rows is None else x[rows]


def _put_rows(x: torch.Tensor, rows: torch.Tensor | None, values: torch.Tensor) -> torch.Tensor:
    """x with `values` at the rows still running (values itself when `rows` is None)."""
    if rows is None:
        return values
    return x.index_put((rows,), values)


def _scatter(x: torch.Tensor, where: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """x (R, L) with values (R, n) written at where (R, n); pads (where == L) are dropped."""
    L = x.shape[1]
    return torch.cat([x, x[:, :1]], 1).scatter(1, where, values)[:, :L]


def _logits_at(base: BaseModel, out: Proposal, at: torch.Tensor) -> torch.Tensor:
    """The proposal's logits at grid positions `at` (B * branches, n), running the head there if need be."""
    if out.logits is not None:
        return out.logits.gather(1, at[..., None].expand(-1, -1, out.logits.shape[-1]))
    features = out.features.gather(1, at[..., None].expand(-1, -1, out.features.shape[-1]))
    return base.head_at(features, at)


def guided(config: SamplerConfig, t: int, logits: torch.Tensor) -> torch.Tensor:
    """The logits step t draws from (B, n, K), from the branches' (B * branches, n, K), conditional
    branch first: (1 + w_t) l_cond - w_t l_uncond under CFG (cfg_mix difference:
    l_uncond + (1 + w_t) (l_cond - l_uncond), the same up to rounding)."""
    logits = _split_branches(logits.float(), config.branches)
    if config.branches == 2:
        w = config.cfg_weight(t)
        if config.cfg_mix == "difference":
            cond, uncond = logits[:, 0], logits[:, 1]
            return uncond + (1 + w) * (cond - uncond)
        return (1 + w) * logits[:, 0] - w * logits[:, 1]
    return logits[:, 0]


def _draw(config: SamplerConfig, t: int, logits: torch.Tensor, where: torch.Tensor, u_tok: torch.Tensor,
          u_conf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`_draw_scored` without the probability: a candidate and its noisy confidence."""
    return _draw_scored(config, t, logits, where, u_tok, u_conf)[:2]


def _draw_scored(config: SamplerConfig, t: int, logits: torch.Tensor, where: torch.Tensor, u_tok: torch.Tensor,
                 u_conf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A candidate token, its noisy confidence and its probability (the tempered softmax it was drawn
    from) at each of `where` (B, n), from the branches' logits there (B * branches, n, K) and the
    step's random numbers over the whole grid: u_tok (B, L), or (B, L, K) Exp(1) for the multinomial
    draw, and u_conf (B, L)."""
    logits = guided(config, t, logits)
    u_conf = u_conf.gather(1, where)
    if u_tok.dim() == 3:
        u_tok = u_tok.gather(1, where[..., None].expand(-1, -1, u_tok.shape[-1]))
    else:
        u_tok = u_tok.gather(1, where)
    if config.temperature_mode == "multiply":
        scaled = logits * config.temperature
    else:
        scaled = logits / max(config.temperature, 1e-6)
    logp = torch.log_softmax(scaled, dim=-1)
    if config.draw == "multinomial":  # torch.multinomial(p, 1) on a CPU: argmax(p / Exp(1))
        candidate = (torch.softmax(scaled, dim=-1) / u_tok).argmax(-1)
    elif config.temperature > 0:
        cdf = logp.exp().cumsum(-1)
        candidate = torch.searchsorted(cdf, (u_tok * cdf[..., -1])[..., None]).squeeze(-1).clamp_(max=logits.shape[-1] - 1)
    else:
        candidate = logp.argmax(-1)
    if config.confidence == "probability":  # AmusedScheduler: log(probs.clamp(1e-20)) of the untempered softmax
        conf = torch.log(torch.softmax(logits, dim=-1).gather(-1, candidate[..., None]).squeeze(-1).clamp(1e-20))
    else:
        scored = logp if config.confidence == "tempered" else torch.log_softmax(logits, dim=-1)
        conf = scored.gather(-1, candidate[..., None]).squeeze(-1)
    # Gumbel noise as AmusedScheduler's gumbel_noise computes it; the outer clamp never binds for
    # u < 1 (-log u >= 6e-8), so the other samplers' noise is unchanged bit for bit
    noise = -torch.log((-torch.log(u_conf.clamp(1e-20))).clamp(1e-20))
    prob = logp.gather(-1, candidate[..., None]).squeeze(-1).exp()
    return candidate, conf + config.noise_scale(t) * noise, prob


def trajectory_seed(run_seed: int, index: int) -> int:
    """The seed of trajectory `index` of a run: independent of batch size and process count."""

    return int(np.random.SeedSequence([int(run_seed), int(index)]).generate_state(1, np.uint32)[0])
