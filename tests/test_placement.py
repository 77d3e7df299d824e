"""Where full steps go: the uniform placement, and the searched one saved beside a shortcut (one
reader, one writer, never into the installed package)."""

import json

import pytest
import torch

from migmcut.errors import UserError
from migmcut.placement import (
    SCHEDULES_FILE, budget_schedule, load_schedule, resolve_schedule, save_schedules, shortcut_schedule,
)
from migmcut.shortcut import BUILTIN, Shortcut, ShortcutConfig


@pytest.mark.parametrize("steps", [1, 2, 5, 16, 32, 64])
def test_budget_schedule_places_distinct_increasing_full_steps(steps):
    for budget in range(1, steps + 1):
        full = budget_schedule(steps, budget)
        assert len(full) == budget and full[0] == 0
        assert all(a < b for a, b in zip(full, full[1:])) and full[-1] < steps


def test_budget_schedule_is_uniform_and_checks_bounds():
    assert budget_schedule(16, 4) == [0, 4, 8, 12]
    assert budget_schedule(64, 14)[:3] == [0, 5, 9]
    for bad in (0, 17):
        with pytest.raises(ValueError):
            budget_schedule(16, bad)



@pytest.fixture
def checkpoint(tmp_path):
    net = Shortcut(ShortcutConfig(feature_dim=16))
    net.save(tmp_path / "ck", {"base_fingerprint": "x"})
    return tmp_path / "ck"


def test_the_one_writer_merges_and_the_reader_checks_the_weights(checkpoint):
    save_schedules(checkpoint, {16: {4: {"full_steps": [0, 3, 6, 10]}}}, {"objective": "search"})
    save_schedules(checkpoint, {16: {6: {"full_steps": [0, 2, 3, 5, 7, 10]}}, 32: {8: {"full_steps": list(range(0, 32, 4))}}},
                   {"objective": "online"})
    data = json.loads((checkpoint / SCHEDULES_FILE).read_text())
    assert set(data["schedules"]["16"]) == {"4", "6"} and data["objective"] == "online"  # merged, not replaced
    assert load_schedule(checkpoint, 16, 4) == [0, 3, 6, 10] and load_schedule(checkpoint, 16, 5) is None
    net = Shortcut(ShortcutConfig(feature_dim=16))
    with torch.no_grad():
        next(net.parameters()).add_(1.0)
    net.save(checkpoint, {"base_fingerprint": "x"})  # new weights: the old placements are stale
    with pytest.raises(UserError, match="other shortcut weights"):
        load_schedule(checkpoint, 16, 4)
    save_schedules(checkpoint, {16: {3: {"full_steps": [0, 4, 9]}}}, {})
    assert set(json.loads((checkpoint / SCHEDULES_FILE).read_text())["schedules"]["16"]) == {"3"}  # started over


def test_the_shipped_checkpoint_is_never_written():
    shipped = BUILTIN / "tiny-shapes" / "shortcut"
    before = (shipped / SCHEDULES_FILE).read_bytes()
    with pytest.raises(UserError, match="never written"):
        save_schedules(shipped, {16: {4: {"full_steps": [0, 1, 2, 3]}}}, {})
    assert (shipped / SCHEDULES_FILE).read_bytes() == before


def test_a_run_resolves_searched_where_saved_else_its_own_placement(checkpoint):
    save_schedules(checkpoint, {16: {4: {"full_steps": [0, 3, 6, 10]}}}, {})
    assert shortcut_schedule("auto", 16, 4, checkpoint, "half-up") == [0, 3, 6, 10]
    assert shortcut_schedule("uniform", 16, 4, checkpoint, "half-up") == [0, 4, 8, 12]
    assert shortcut_schedule("auto", 16, 5, checkpoint, "half-up") == budget_schedule(16, 5)
    assert resolve_schedule("auto", False, 16, 4, checkpoint) is None  # the cache keeps its own placement
    assert resolve_schedule("searched", False, 16, 4, checkpoint) == [0, 3, 6, 10]
    with pytest.raises(UserError, match="no searched schedule for N=16, B=5"):
        resolve_schedule("searched", True, 16, 5, checkpoint)
