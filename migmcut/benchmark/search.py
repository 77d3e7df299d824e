"""`migmcut schedule search` as a library: where the full steps go for each budget, searched on a
trajectory store's validation trajectories and saved beside the shortcut (`schedules.json`), where
generate and bench (schedule auto or searched) take it from.

    run = search_schedules(recipe, "runs/store", shortcut="runs/sc", budgets=[3, 4, 5, 6])
    run.schedules[0].full_steps, run.file

The search itself (rollout errors, the dynamic programme) is `migmcut.schedule_search`.
"""

from __future__ import annotations

from dataclasses import dataclass

from migmcut import schedule_search as ss
from migmcut.base import load_base
from migmcut.benchmark.plan import check_plan, int_list
from migmcut.benchmark.store import open_store, validation_indices
from migmcut.devices import placement
from migmcut.errors import UserError, arg
from migmcut.placement import check_writable, save_schedules
from migmcut.recipe import as_recipe
from migmcut.shortcut import load_shortcut, resolve_checkpoint


@dataclass
class SearchRun:
    schedules: list  # a schedule_search.SearchResult per budget: the searched placement and the uniform one
    file: str  # the schedules.json they were merged into


def search_and_save(opened, val_idx, base, net, checkpoint, budgets: list[int], store, device):
    """Rollout errors of shortcut `net` (and of the cache) on trajectories `val_idx` of the opened `store`,
    then the placement searched for each budget and merged into CHECKPOINT/schedules.json.
    -> (the searched schedules, the file, the rollout errors)."""
    errors = ss.rollout_errors(opened, val_idx, base, net.float(), device=device)
    found = ss.search(errors["shortcut"], budgets)
    path = save_schedules(checkpoint, ss.table(found), {"store": str(store), "val_trajectories": int(len(val_idx)),
                                                   "objective": ss.OBJECTIVE_TEXT})
    net.to(dtype=next(base.parameters()).dtype)
    return found, path, errors


def search_schedules(recipe, store: str, *, shortcut=None, steps: int | None = None, budgets: list[int] | None = None,
                     device=None, dtype="auto", base=None) -> SearchRun:
    """Search the full-step placement of each budget on `store`'s validation trajectories (those the
    shortcut was not trained on) and save it beside the shortcut checkpoint (`schedules.json`).

    Unset arguments take the recipe's: `steps` its bench.steps or sampler.steps (the store's step
    count), `budgets` its bench.budgets, `shortcut` its checkpoint. A shipped checkpoint is never
    written: search on a copy of it.
    """
    rec = as_recipe(recipe)
    N = steps if steps is not None else (rec.bench.steps or rec.sampler.steps)
    budget_list = int_list(budgets, "budgets") if budgets is not None else list(rec.bench.budgets)
    check_plan(N, budget_list, ["shortcut"], "auto")  # steps >= 1, every budget in [1, N]
    if store is None:
        raise UserError(f"a schedule search needs {arg('store', 'STORE')} (validation trajectories to measure rollout "
                        "errors on)")
    checkpoint = shortcut if shortcut is not None else resolve_checkpoint(rec.shortcut.checkpoint)
    check_writable(checkpoint)

    dev, dt = placement(device, dtype, base)
    base = base if base is not None else load_base(rec.base, dev, dt)
    if N > base.num_tokens:
        raise UserError(f"{arg('steps', N)} exceeds the number of image tokens ({base.num_tokens})")
    if checkpoint is None:
        raise UserError(f"a schedule search needs a shortcut checkpoint: pass {arg('shortcut', 'DIR')} (made by "
                        "migmcut train)")
    net, meta = load_shortcut(checkpoint, base)
    net = net.to(device=dev, dtype=next(base.parameters()).dtype)
    opened = open_store(store, base, rec, N)
    val_idx = validation_indices(opened, meta, rec, store)
    found, path, _ = search_and_save(opened, val_idx, base, net, checkpoint, budget_list, store, dev)
    return SearchRun(found, str(path))
