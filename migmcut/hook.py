"""The shortcut inside a sampling loop migmcut did not write: `migmcut.attach`.

    base = migmcut.load_base(migmcut.load_recipe("amused-256", ["base.model=/data/amused-256"]).base)
    scheduler = AmusedScheduler.from_pretrained("/data/amused-256", subfolder="scheduler")
    pipe = AmusedPipeline(base.vq, base.tokenizer, base.text_encoder, base.transformer, scheduler)
    with migmcut.attach(pipe.transformer, "runs/amused-sc", steps=12, budget=4, base=base):
        latents = pipe("a red fox in the snow", num_inference_steps=12, output_type="latent").images

`attach` puts a forward of its own on that one module (an instance attribute, as diffusers' model
hooks do; nothing else changes) until `remove()` or the end of the `with` block. Each call of the
network is one step of one *slot*: a loop that batches its CFG rows in one call (AmusedPipeline,
MaskGIT's `sample`) has one slot, one that calls each branch separately (Lumina-DiMOO's
`generate_image`) one slot per branch, told apart by the calls of step 0 (they read the same token
state). A slot's step t is a full step where migmcut's placement puts one (`placement.shortcut_schedule`
with the family's rounding, or the searched schedule saved beside a shortcut checkpoint): the network
runs as usual and the hook keeps the head's input. Every other step does not run the network: the
tokens fixed since the slot's last call (the difference of the two token states, row by row) advance
the features through the shortcut, and the base's own head gives the logits, in the network's usual
output. Where the adapter finds the token state, conditions, features and head is the adapter's
(`BaseModel.attach_*`); this module is the same for every family.

A call the hook cannot follow is refused with one `UserError` naming what it saw: fixed tokens that
changed, a step that fixed none, conditions that are not the slot's, a batch of another size, more
calls than `steps`; leaving a `with` block in the middle of an image (the loop ran fewer steps) too.
A call whose tokens are not a continuation of the last image's starts the next image.

One function and a handle, not a config object plus `apply_*` (diffusers' cache hooks): migmcut's
API is functions with keyword arguments (generate, bench), there is one method to apply, and its
settings (N, B, placement) are the ones `generate` already takes by those names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from migmcut.base.conditions import Conditions
from migmcut.base.interface import BaseModel
from migmcut.base.registry import kind_name
from migmcut.errors import COUNT_MAX, CheckpointError, UserError, api, arg
from migmcut.placement import ROUNDINGS, SCHEDULES, shortcut_schedule
from migmcut.policies import rows_of
from migmcut.shortcut import ShortcutInputs, load_shortcut
_MARK = "_migmcut_shortcut_hook"


@dataclass
class _Slot:
    """One stream of calls: its rows' last token state, conditions and features."""

    tokens: torch.Tensor  # (R, L) the token state of the slot's last call
    cond: Conditions
    t: int = 0  # steps taken
    features: torch.Tensor | None = None  # (R, L, D) the head's input after the last step
    sequence: torch.Tensor | None = None  # (R, T, D) a released shortcut's whole sequence
    image_rows: torch.Tensor | None = None  # (R, L) where the image tokens sit in that sequence (found once)

    @property
    def rows(self) -> int:
        return self.tokens.shape[0]


@api
def attach(model, shortcut, *, steps: int, budget: int, base, schedule: str = "auto",
           rounding: str | None = None) -> "ShortcutHook":
    """Run `shortcut` inside whatever loop calls `model` (the base's network: `base.attach_network()`),
    `budget` full steps out of `steps`; -> the handle (`remove()`, or use it as a context manager).

    `shortcut`: a checkpoint (a `migmcut train` directory or a released `.pth`), the `(network, meta)`
    pair `migmcut.load_shortcut` returns, or a shortcut network. `base`: the migmcut base that owns
    `model` (its fingerprint, head and frozen embeddings). `schedule`: auto (the searched placement
    saved beside a checkpoint, where there is one), uniform or searched, as in `generate`; `rounding`:
    half-up or half-even (default: the family's, `type(base).budget_rounding`).
    """

    if not isinstance(base, BaseModel):
        raise UserError(f"{arg('base')} must be the migmcut base whose network the loop calls (migmcut.load_base), "
                        f"got a {type(base).__name__}")
    kind = kind_name(type(base))
    network = base.attach_network()
    if network is None:
        raise UserError(f"the {kind} base ({type(base).__name__}) declares no network for attach (attach_network)")
    if model is not network:
        raise UserError(f"{arg('model')} is a {type(model).__name__}, not the network of this {kind} base's loop "
                        f"(a {type(network).__name__}: base.attach_network()): run the loop on the base's own modules")
    if _MARK in model.__dict__:
        raise UserError(f"{arg('model')} already has a shortcut attached: remove() it first")
    for name, value, high in (("steps", steps, min(base.num_tokens, COUNT_MAX)), ("budget", budget, steps)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{arg(name, repr(value))} must be a whole number")
        if not 1 <= value <= high:
            limit = f"the step count ({steps})" if name == "budget" else f"the number of image tokens ({high})"
            raise UserError(f"{arg(name, value)} must be between 1 and {limit}")
    if schedule not in SCHEDULES:
        raise UserError(f"{arg('schedule', repr(schedule))}: choose auto, uniform or searched")
    rounding = rounding if rounding is not None else type(base).budget_rounding
    if rounding not in ROUNDINGS:
        raise UserError(f"{arg('rounding', repr(rounding))}: choose {' or '.join(ROUNDINGS)}")
    net, checkpoint = _shortcut(shortcut, base)
    if getattr(net, "reads_sequence", False) and not type(base).attach_reads_sequence:
        raise UserError(f"{arg('shortcut')} reads the whole input sequence (a released shortcut), which attach does "
                        f"not carry for the {kind} base: use a shortcut trained with migmcut")
    full = shortcut_schedule(schedule, steps, budget, checkpoint, rounding)
    net = net.to(device=base.device, dtype=next(base.parameters()).dtype)
    return ShortcutHook(model, base, net, steps, full)


def _shortcut(shortcut, base) -> tuple[torch.nn.Module, str | Path | None]:
    """The shortcut network, checked against `base`, and its checkpoint path (None for a module)."""

    if isinstance(shortcut, (str, Path)):
        try:
            net, _ = load_shortcut(shortcut, base)
        except CheckpointError as err:
            raise CheckpointError(f"{arg('shortcut')}: {err}") from None
        return net, shortcut
    meta = {}
    if isinstance(shortcut, tuple) and len(shortcut) == 2 and isinstance(shortcut[1], dict):
        shortcut, meta = shortcut
    if not isinstance(shortcut, torch.nn.Module):
        raise UserError(f"{arg('shortcut')} must be a checkpoint path, load_shortcut's (network, meta) or a shortcut "
                        f"network, got a {type(shortcut).__name__}")
    want = meta.get("base_fingerprint")
    if want is not None and want != base.fingerprint:
        raise CheckpointError(f"{arg('shortcut')} was trained for base {want}, but this base is {base.fingerprint}: "
                              "use a shortcut trained for this base")
    config = getattr(shortcut, "config", None)
    width = config.get("feature_dim") if isinstance(config, dict) else getattr(config, "feature_dim", None)
    if width is not None and width != base.feature_dim:
        raise CheckpointError(f"{arg('shortcut')} predicts {width}-wide features; this base's are {base.feature_dim}")
    return shortcut, None


class ShortcutHook:
    """The shortcut on one network: what `attach` returns. `full_steps` are the steps that run the
    network; `counts` the calls so far by kind (full, shortcut, and passed: calls that were no
    sampling step); `remove()` (or leaving a `with` block) restores the network."""

    def __init__(self, model: torch.nn.Module, base, shortcut: torch.nn.Module, steps: int, full_steps: list[int]):
        self.model, self.base, self.shortcut = model, base, shortcut
        self.steps, self.full_steps = steps, list(full_steps)
        self._full = set(full_steps)
        self.reads_sequence = bool(getattr(shortcut, "reads_sequence", False))
        self.counts = {"full": 0, "shortcut": 0, "passed": 0}
        self._slots: list[_Slot] = []
        self._period: int | None = None  # calls per step, once step 0 is over
        self._calls = 0  # calls of the current image
        self._inputs = None  # ShortcutInputs, built on first use
        self._capture: list | None = None  # set while a full step runs: the feature site's tensor lands here
        self._inside_base = 0  # >0 while the base's own forward runs (migmcut's sampler): the hook stands aside
        site, pre = base.attach_feature_site()
        keep = self._keep_input if pre else self._keep_output
        self._handles = [
            site.register_forward_pre_hook(keep) if pre else site.register_forward_hook(keep),
            base.register_forward_pre_hook(self._enter_base),
            base.register_forward_hook(self._leave_base, always_call=True),
        ]
        self._previous = model.__dict__.get("forward")  # an instance-level forward set before ours
        self._run = model.forward
        model.forward = self._forward
        model.__dict__[_MARK] = self
        self.active = True

    # -- the handle ----------------------------------------------------------------------------
    @property
    def budget(self) -> int:
        return len(self.full_steps)

    def remove(self) -> None:
        """Take the hook off: the network's forward is its own again (idempotent)."""
        if not self.active:
            return
        self.active = False
        for handle in self._handles:
            handle.remove()
        d = self.model.__dict__
        if d.get("forward") == self._forward:
            if self._previous is None:
                del d["forward"]
            else:
                d["forward"] = self._previous
        d.pop(_MARK, None)

    def __enter__(self) -> "ShortcutHook":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        stopped = self._in_progress()
        self.remove()
        if kind is None and stopped is not None:
            raise UserError(stopped)

    def __repr__(self) -> str:
        state = "attached" if self.active else "removed"
        return f"ShortcutHook({state}, steps={self.steps}, full_steps={self.full_steps}, counts={self.counts})"

    # -- hooks ---------------------------------------------------------------------------------
    def _keep_input(self, module, args):
        if self._capture is not None:
            self._capture.append(args[0])

    def _keep_output(self, module, args, output):
        if self._capture is not None:
            self._capture.append(output)

    def _enter_base(self, module, args):
        self._inside_base += 1

    def _leave_base(self, module, args, output):
        self._inside_base -= 1

    def _forward(self, *args, **kwargs):
        if not self.active or self._inside_base:
            return self._run(*args, **kwargs)
        read = self.base.attach_read(args, kwargs)
        if read is None:
            self.counts["passed"] += 1
            return self._run(*args, **kwargs)
        tokens, cond = read
        try:
            slot = self._route(tokens, cond)
        except UserError:
            self._reset()  # the next image starts afresh
            raise
        tokens = tokens.detach().clone()  # a loop may write its state in place between calls
        try:
            if slot.t in self._full:
                out = self._full_step(slot, args, kwargs)
            else:
                out = self._shortcut_step(slot, tokens, cond, args, kwargs)
        except BaseException:
            self._reset()
            raise
        slot.tokens, slot.t = tokens, slot.t + 1
        self._calls += 1
        return out

    # -- following the loop ----------------------------------------------------------------------
    def _reset(self) -> None:
        self._slots, self._period, self._calls = [], None, 0

    def _done(self) -> bool:
        return bool(self._slots) and all(s.t == self.steps for s in self._slots)

    def _in_progress(self) -> str | None:
        if not self._slots or self._done():
            return None
        t = min(s.t for s in self._slots)
        return (f"the loop stopped after {t} of steps={self.steps} steps of an image: run it with the steps "
                f"given to attach (e.g. num_inference_steps={self.steps})")

    def _route(self, tokens: torch.Tensor, cond: Conditions) -> _Slot:
        """The slot this call continues (checked), or a new one."""
        call = self._calls + 1
        if self._done():
            slot = self._slots[self._calls % (self._period or len(self._slots))]
            if self._follows(slot, tokens, cond, call) is None:
                raise UserError(f"call {call} continues an image that already ran steps={self.steps} steps: "
                                f"more calls than steps (run the loop with {self.steps} steps)")
            self._reset()
            call = 1
        if not self._slots:
            return self._new_slot(tokens, cond)
        if self._period is None:
            first = self._slots[0]
            if first.tokens.shape == tokens.shape and torch.equal(first.tokens, tokens):
                return self._new_slot(tokens, cond)  # another branch of step 0, called on its own
            self._period = len(self._slots)
        slot = self._slots[self._calls % self._period]
        why = self._follows(slot, tokens, cond, call)
        if why is not None:
            if bool((tokens == self.base.mask_id).all()):
                why += (f" (every token is masked: a new image, but the last one stopped after {slot.t} of "
                        f"steps={self.steps} steps)")
            raise UserError(why)
        if slot.t >= self.steps:
            raise UserError(f"call {call} is step {slot.t + 1} of an image attached with steps={self.steps}: more calls "
                            f"than steps")
        return slot

    def _new_slot(self, tokens: torch.Tensor, cond: Conditions) -> _Slot:
        slot = _Slot(tokens.detach().clone(), Conditions(**{k: v.detach().clone() for k, v in cond.tensors.items()}))
        self._slots.append(slot)
        return slot

    def _follows(self, slot: _Slot, tokens: torch.Tensor, cond: Conditions, call: int) -> str | None:
        """Why this call does not continue `slot` (None: it does)."""
        if tokens.shape[0] != slot.rows:
            return f"call {call} has a batch of {tokens.shape[0]} rows; the calls it continues had {slot.rows}"
        if tokens.shape != slot.tokens.shape:
            return f"call {call} has {tokens.shape[1]} image tokens per row; the calls it continues had {slot.tokens.shape[1]}"
        mine, theirs = cond.tensors, slot.cond.tensors
        for name in sorted(set(mine) | set(theirs)):
            a, b = mine.get(name), theirs.get(name)
            if a is None or b is None or a.shape != b.shape or not torch.equal(a.to(b.device), b):
                return (f"call {call}: its condition {name!r} is not that of the calls it continues (a step's branches "
                        f"must come in the same order every step)")
        mask = self.base.mask_id
        was = slot.tokens != mask
        changed = was & (tokens != slot.tokens)
        if bool(changed.any()):
            r, p = (int(i) for i in changed.nonzero()[0])
            return (f"call {call} changes a token already fixed (row {r}, position {p}: {int(slot.tokens[r, p])} -> "
                    f"{int(tokens[r, p])}); attach follows a loop that only fixes more tokens")
        new = ~was & (tokens != mask)
        idle = (~new.any(1)).nonzero()
        if len(idle):
            return (f"call {call} fixes no new token in row {int(idle[0])} since the call before "
                    f"(its token state is the previous one)")
        return None

    # -- the steps -------------------------------------------------------------------------------
    def _full_step(self, slot: _Slot, args, kwargs):
        self._capture = []
        try:
            out = self._run(*args, **kwargs)
            captured = self._capture
        finally:
            self._capture = None
        if not captured:
            raise RuntimeError(f"{type(self.base).__name__}.attach_feature_site() was not called during the network's forward")
        features, sequence = self.base.attach_features(captured[-1], args, kwargs)
        slot.features, slot.sequence = features.detach(), None if sequence is None else sequence.detach()
        self.counts["full"] += 1
        return out

    @torch.no_grad()
    def _shortcut_step(self, slot: _Slot, tokens: torch.Tensor, cond: Conditions, args, kwargs):
        base, mask = self.base, self.base.mask_id
        new = (slot.tokens == mask) & (tokens != mask)
        masked = tokens == mask
        if self.reads_sequence:
            if not bool((masked.sum(1) == masked[0].sum()).all()):
                raise UserError("the rows of a call have different numbers of masked tokens, which a shortcut that "
                                "reads the whole sequence cannot follow")
            ratio = masked[0].float().mean().item()
            slot.sequence = self.shortcut.advance(base, slot.sequence, tokens, cond, new, ratio)
            if slot.image_rows is None:
                slot.image_rows = base.image_rows(torch.arange(base.num_tokens, device=tokens.device).expand(slot.rows, -1))
            slot.features = rows_of(slot.sequence, slot.image_rows)
        else:
            slot.features = self.shortcut(slot.features, **self._inputs_for(slot.features, tokens, new, cond))
        self.counts["shortcut"] += 1
        return base.attach_output(self._logits(slot.features, masked), args, kwargs)

    def _inputs_for(self, features: torch.Tensor, tokens: torch.Tensor, new: torch.Tensor, cond: Conditions) -> dict:
        """The shortcut's inputs besides h: each row's newly fixed tokens (ascending positions, padded where
        rows fixed different numbers), the fraction still masked, the conditions."""

        base = self.base
        if self._inputs is None or self._inputs.dtype != features.dtype or self._inputs.device != features.device:
            self._inputs = ShortcutInputs(base, features.device, features.dtype)
        R = tokens.shape[0]
        counts = new.sum(1)
        M = int(counts.max())
        if bool((counts == M).all()):
            pos = new.nonzero()[:, 1].view(R, M)
            new_mask = torch.ones(pos.shape, dtype=torch.bool, device=pos.device)
            ids = tokens.gather(1, pos)
        else:
            pos = (~new).to(torch.uint8).argsort(dim=1, stable=True)[:, :M]  # each row's new positions first
            new_mask = new.gather(1, pos)
            pos = torch.where(new_mask, pos, 0)
            ids = torch.where(new_mask, tokens.gather(1, pos), 0)
        ratio = (tokens == base.mask_id).float().mean(1)
        return {**self._inputs.tokens(ids, pos, new_mask, ratio), **self._inputs.condition(cond)}

    def _logits(self, features: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """The base's head at every position (R, L, K): at the masked positions as migmcut's sampler runs it
        (those positions alone, `head_at`), then at the fixed ones; row by row where rows differ in count."""
        R, L = masked.shape
        out = None
        for part in (masked, ~masked):
            n = part.sum(1)
            if not bool(n.any()):
                continue
            for r in [None] if bool((n == n[0]).all()) else [r for r in range(R) if n[r]]:
                rows = slice(None) if r is None else slice(r, r + 1)
                where = part[rows].nonzero()[:, 1].view(part[rows].shape[0], -1)  # ascending, as the sampler's
                feats = features[rows].gather(1, where[..., None].expand(-1, -1, features.shape[-1]))
                logits = self.base.head_at(feats, where)
                if out is None:
                    out = logits.new_empty(R, L, logits.shape[-1])
                out[rows].scatter_(1, where[..., None].expand(-1, -1, logits.shape[-1]), logits)
        return out
