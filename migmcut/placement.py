"""Where the B full steps of a budget go among N steps: the one place that decides it.

- Uniform: `budget_schedule(N, B, rounding)`, step 0 then max(prev + 1, round(N k / B)).
- Searched: a placement found for a trained shortcut (`migmcut.schedule_search`) and saved beside its
  checkpoint in `schedules.json`, keyed by N and B, with the sha256 of the weights it was searched
  for. `load_schedule` is its one reader and `save_schedules` its one writer (merging, and never
  into the installed package).
- `resolve_schedule(schedule, searchable, N, B, checkpoint)`: what a run's `schedule` (auto, uniform,
  searched) asks for: a searched placement, or None for the method's own; `shortcut_schedule` the
  shortcut's full steps, searched where asked and saved, else uniform.

Methods with placements of their own (recap, mlcache) keep them in `migmcut.policies`.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from migmcut.errors import UserError, arg
from migmcut.files import atomic_write, is_shipped

ROUNDINGS = ("half-up", "half-even")  # where budget_schedule puts an exact half
SCHEDULES = ("auto", "uniform", "searched")  # what a run may ask for
SCHEDULES_FILE = "schedules.json"


def budget_schedule(steps: int, budget: int, rounding: str = "half-up") -> list[int]:
    """B full steps among N: step 0, then max(prev + 1, round(N k / B)), halves rounded up
    (floor(x + 0.5), migmcut's own) or to even (Python's `round` of N * (k / B), the paper's
    `refresh_steps`); they differ only on exact halves (N=5, B=2: [0, 3] against [0, 2])."""
    if not 1 <= budget <= steps:
        raise ValueError(f"budget must be between 1 and the step count ({steps}), got {budget}")
    if rounding not in ROUNDINGS:
        raise ValueError(f"unknown budget rounding {rounding!r} (choose from {', '.join(ROUNDINGS)})")
    full = [0]
    for k in range(1, budget):
        at = math.floor(steps * k / budget + 0.5) if rounding == "half-up" else round(steps * (k / budget))
        full.append(max(full[-1] + 1, at))
    return full


def weights_digest(checkpoint: str | Path) -> str:
    """The sha256 (16 hex digits) of a checkpoint's shortcut weights: what its schedules were searched for."""
    h = hashlib.sha256()
    with open(Path(checkpoint) / "shortcut.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def check_writable(checkpoint: str | Path | None) -> None:
    """A shipped checkpoint (under the installed package) is never written: its schedules are searched on a copy."""
    if checkpoint is not None and is_shipped(checkpoint):
        raise UserError(f"{checkpoint} is the shipped shortcut, which is never written: copy it "
                        f"(cp -r {checkpoint} DIR) and pass {arg('shortcut', 'DIR')} to save the searched schedules beside the copy")


def save_schedules(checkpoint: str | Path, schedules: dict[int, dict[int, dict]], meta: dict) -> Path:
    """Merge `schedules` ({N: {B: {"full_steps": [...], ...}}}) into CHECKPOINT/schedules.json, atomically;
    entries searched for other weights than the checkpoint's are dropped."""
    check_writable(checkpoint)
    checkpoint = Path(checkpoint)
    path = checkpoint / SCHEDULES_FILE
    digest = weights_digest(checkpoint)
    data = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except ValueError:
            data = {}
    if data.get("shortcut_sha256") != digest:
        data = {}  # searched for other weights: start over
    data.update({"shortcut_sha256": digest, **meta})
    table = data.setdefault("schedules", {})
    for steps, by_budget in schedules.items():
        for budget, entry in by_budget.items():
            table.setdefault(str(steps), {})[str(budget)] = entry
    atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2) + "\n"))
    return path


def load_schedule(checkpoint: str | Path, steps: int, budget: int) -> list[int] | None:
    """The searched full steps for (N, B) saved beside `checkpoint`, or None if there are none."""
    path = Path(checkpoint) / SCHEDULES_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError:
        raise UserError(f"{path} is not valid JSON: delete it and search again") from None
    entry = data.get("schedules", {}).get(str(steps), {}).get(str(budget))
    if entry is None:
        return None
    if data.get("shortcut_sha256") != weights_digest(checkpoint):
        raise UserError(f"{path} was searched for other shortcut weights: search again (migmcut schedule search)")
    full = [int(s) for s in entry["full_steps"]]
    if len(full) != budget or full[0] != 0 or any(b <= a for a, b in zip(full, full[1:])) or full[-1] >= steps:
        raise UserError(f"{path}: the schedule for N={steps}, B={budget} is malformed: search again")
    return full


def resolve_schedule(schedule: str, searchable: bool, steps: int, budget: int | None, checkpoint) -> list[int] | None:
    """The full steps `schedule` asks for, or None for the method's own placement.

    auto: the searched placement saved beside a shortcut checkpoint, for a method that takes one
    (`searchable`: `Method.searched`, the shortcut and the hybrid), where there is one; searched: that
    placement, required, for any method; uniform: None.
    """
    if schedule not in SCHEDULES:
        raise UserError(f"{arg('schedule', repr(schedule))}: choose auto, uniform or searched")
    if not (schedule == "searched" or (schedule == "auto" and searchable)):
        return None
    saved = isinstance(checkpoint, (str, Path))  # a loaded module has no schedules beside it
    full = load_schedule(checkpoint, steps, budget) if saved and budget is not None else None
    if schedule == "searched" and full is None:
        if not saved or budget is None:
            raise UserError(f"{arg('schedule', 'searched')} needs a shortcut checkpoint and {arg('budget')}")
        raise UserError(f"no searched schedule for N={steps}, B={budget} beside {checkpoint}: "
                        "run migmcut schedule search --store STORE --shortcut CKPT first")
    return full


def shortcut_schedule(schedule: str, steps: int, budget: int, checkpoint, rounding: str) -> list[int]:
    """The shortcut's full steps: the searched placement where `schedule` asks for it and one is saved
    beside `checkpoint`, else the uniform one."""
    return resolve_schedule(schedule, True, steps, budget, checkpoint) or budget_schedule(steps, budget, rounding)
