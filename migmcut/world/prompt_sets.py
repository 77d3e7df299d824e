"""The shipped held-out prompt sets: `bench` for measuring, `selection` for choosing.

Both are drawn from the grammar's held-out split (captions the base never trained on), without
overlap, each with one- and two-shape captions in the split's own proportion (6 of 497 held-out
captions have one shape). `bench` (256 captions) is what `migmcut bench` scores by default and
what no training, schedule search or checkpoint selection may touch; choose shortcuts, settings
and schedules by sampling `selection` (241 captions). The files beside this module are
`build_sets()`'s output, shipped so that the sets stay fixed whatever the code does next:

    python -m migmcut.world.prompt_sets   # rewrite migmcut/world/prompts/*.txt (developers only)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from migmcut.world import shapes

DIR = Path(__file__).resolve().parent / "prompts"
NAMES = ("bench", "selection")
BENCH_SIZE = 256


def build_sets(seed: int = 0) -> dict[str, list[str]]:
    rng = np.random.default_rng(seed)
    one = [shapes.caption(s) for s in shapes.split_specs(True, 1)]
    two = [shapes.caption(s) for s in shapes.split_specs(True, 2)]
    rng.shuffle(one)
    rng.shuffle(two)
    n_one = round(BENCH_SIZE * len(one) / (len(one) + len(two)))
    bench = one[:n_one] + two[: BENCH_SIZE - n_one]
    selection = one[n_one:] + two[BENCH_SIZE - n_one :]
    rng.shuffle(bench)
    rng.shuffle(selection)
    return {"bench": bench, "selection": selection}


def path(name: str) -> Path:
    return DIR / f"{name}.txt"


def load(name: str) -> list[str]:
    """The shipped set `name` (bench or selection), one caption a line."""
    return path(name).read_text(encoding="utf-8").splitlines()


if __name__ == "__main__":
    DIR.mkdir(exist_ok=True)
    for name, captions in build_sets().items():
        path(name).write_text("\n".join(captions) + "\n", encoding="utf-8")
        print(f"{path(name)}: {len(captions)} captions")
