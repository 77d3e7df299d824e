"""Pins taken before the restructuring (issue 28): on the debug recipe, what record stores, the shortcut
train makes from it, generate's images for every method and bench's rows (quality, not timings) are
bit-identical to tests/fixtures/pins/debug.json.

The pins are computed by `compute_pins` of tests/fixtures/pins/make_pins.py (the script that wrote the
file), through the public API only, so the test holds across internal moves. A failure lists every
value that changed; a change that is meant (a fixed count, a new stored format) is pinned again by
running the script, and says so in its commit.
"""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "fixtures" / "pins" / "make_pins.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("make_pins", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_pins = _load_script()
PINNED = json.loads(make_pins.PINS.read_text())


@pytest.fixture(scope="module")
def pins(tmp_path_factory):
    return make_pins.compute_pins(tmp_path_factory.mktemp("pins"))


def differences(got, want, path="") -> list[str]:
    """Every place where `got` differs from `want`, as 'path: got X, pinned Y' lines."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = []
        for key in [*want, *(k for k in got if k not in want)]:
            where = f"{path}/{key}"
            if key not in got or key not in want:
                out.append(f"{where}: {'missing' if key not in got else 'not pinned'}")
            else:
                out += differences(got[key], want[key], where)
        return out
    if isinstance(want, list) and isinstance(got, list) and any(isinstance(w, (dict, list)) for w in want):
        out = [f"{path}: {len(got)} entries, pinned {len(want)}"] if len(got) != len(want) else []
        return out + [d for i, (g, w) in enumerate(zip(got, want)) for d in differences(g, w, f"{path}[{i}]")]
    if type(got) is not type(want) or got != want:
        return [f"{path or '/'}: got {got!r}, pinned {want!r}"]
    return []


def check(got, section: str) -> None:
    diff = differences(got, PINNED[section], section)
    assert not diff, f"{len(diff)} pinned value(s) changed:\n" + "\n".join(diff[:40])


def test_the_pins_cover_every_method():
    assert set(PINNED["generate"]) == {"vanilla-8", "cache-8/3", "shortcut-8/3", "recap-8/3", "mlcache-8/3",
                                       "mlcache-8", "hybrid-8/3"}
    assert {r["method"] for r in PINNED["bench"]} == set(make_pins.BENCH_METHODS)
    assert {r["budget"] for r in PINNED["bench"] if r["method"] != "vanilla"} == set(make_pins.BENCH_BUDGETS)


def test_record_stores_the_pinned_arrays(pins):
    check(pins["record"], "record")


def test_train_makes_the_pinned_shortcut(pins):
    check(pins["train"], "train")


def test_generate_makes_the_pinned_images_for_every_method(pins):
    check(pins["generate"], "generate")


def test_bench_rows_have_the_pinned_quality(pins):
    check(pins["bench"], "bench")
