"""What a bench run has finished, kept in OUT/state/ as it finishes (`BenchState`): the same bench
again continues from there."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from migmcut import front
from migmcut.errors import UserError, arg
from migmcut.files import atomic_write_bytes

STATE_DIR = "state"  # OUT/state: what a bench run has finished, for a re-run to continue from
RESULT_FILES = ("bench.json", "bench.csv", "pareto.png", "rollout.json", "rollout.png")


def _plain(x):
    """`x` with numpy scalars and arrays as Python numbers and lists (exact: JSON keeps every float64)."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


class BenchState:
    """What a bench run has finished, kept in OUT/state/ as it finishes, each file written atomically:
    `plan.json` (everything the figures depend on), one JSON file per sampled configuration (its
    figures, bootstrap draws and call counts) and `timing.json` (every timed repeat, and c).

    A run of the same plan into the same OUT takes what is there and computes only the rest, so a
    kill at any point loses at most the configuration (or the timing run) in flight. Another plan
    in that OUT is refused unless `overwrite`.
    """

    def __init__(self, out: Path, plan: dict):
        self.out, self.dir = Path(out), Path(out) / STATE_DIR
        self.plan = json.loads(json.dumps(_plain(plan)))  # as it reads back from plan.json
        self._timing: dict | None = None

    @staticmethod
    def _slug(label: str) -> str:
        return re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-")

    def mode(self, overwrite: bool) -> str:
        """new | continue | replace; a UserError for another bench's results without `overwrite`. Reads only."""
        saved = self.dir / "plan.json"
        found = [n for n in RESULT_FILES if (self.out / n).exists()]
        if not saved.is_file():  # kept files without the plan they belong to (plan.json is written first)
            found += [f"{STATE_DIR}/{p.name}" for p in sorted(self.dir.glob("*.json"))]
        if overwrite:
            return "replace" if found or self.dir.exists() else "new"
        if saved.is_file():
            try:
                old = json.loads(saved.read_text())
            except (OSError, ValueError):
                old = None
            if old == self.plan:
                return "continue"
            differs = (", ".join(k for k in sorted(set(old) | set(self.plan)) if old.get(k) != self.plan.get(k))
                       if isinstance(old, dict) else "its plan.json is unreadable")
            raise UserError(f"{arg('out', self.out)} holds a bench of another plan (it differs in {differs}): run "
                            f"that command again to continue it, pass {arg('overwrite', True)} to replace it, or "
                            f"choose another {arg('out')}")
        if found:
            raise UserError(f"{arg('out', self.out)} holds bench results ({', '.join(found)}) with no plan to "
                            f"continue: pass {arg('overwrite', True)} to replace them, or choose another {arg('out')}")
        return "new"

    def start(self, mode: str) -> None:
        """Clear what `replace` replaces (bench's own files only), then record the plan."""
        if mode == "replace":
            for name in RESULT_FILES:
                (self.out / name).unlink(missing_ok=True)
            if self.dir.is_dir():
                for path in self.dir.glob("*.json"):
                    path.unlink()
        if mode != "continue":
            self.dir.mkdir(exist_ok=True)
            atomic_write_bytes(self.dir / "plan.json", (json.dumps(self.plan, indent=1) + "\n").encode())

    def kept(self) -> int:
        """How many sampled configurations are kept."""
        return sum(1 for p in self.dir.glob("*.json") if p.name not in ("plan.json", "timing.json"))

    def sampled(self, label: str) -> dict | None:
        """A configuration's saved figures, as `run_bench` keeps them; None if not there (or unreadable)."""
        try:
            got = json.loads((self.dir / f"{self._slug(label)}.json").read_text())
            if got["label"] != label:
                return None
            draws = {m: np.asarray(d, dtype=np.float64) for m, d in got["draws"].items()}
            return {"quality": got["quality"], "scores": front.Scores(got["point"], draws), "counts": got["counts"],
                    "per_sample": got.get("per_sample", {}), "source": got["source"]}
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save_sampled(self, label: str, entry: dict) -> None:
        sc = entry["scores"]
        data = {"label": label, "quality": entry["quality"], "point": sc.point, "draws": sc.draws,
                "counts": entry["counts"], "per_sample": entry.get("per_sample", {}), "source": entry["source"]}
        atomic_write_bytes(self.dir / f"{self._slug(label)}.json", json.dumps(_plain(data)).encode())

    def _load_timing(self) -> dict:
        if self._timing is None:
            try:
                self._timing = json.loads((self.dir / "timing.json").read_text())
            except (OSError, ValueError):
                self._timing = {}
            self._timing = {"repeats": dict(self._timing.get("repeats", {})), "c": self._timing.get("c")}
        return self._timing

    def timings(self) -> dict[str, list[float]]:
        return {k: list(v) for k, v in self._load_timing()["repeats"].items()}

    def save_timing(self, label: str, seconds: float) -> None:
        t = self._load_timing()
        t["repeats"].setdefault(label, []).append(float(seconds))
        atomic_write_bytes(self.dir / "timing.json", json.dumps(t).encode())

    def c(self) -> dict | None:
        return self._load_timing()["c"]

    def save_c(self, timing: dict) -> None:
        t = self._load_timing()
        t["c"] = _plain(timing)
        atomic_write_bytes(self.dir / "timing.json", json.dumps(t).encode())
