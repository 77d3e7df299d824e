"""The record -> train -> generate -> bench path every base adapter must run (no tests here)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from migmcut.cli.main import app

runner = CliRunner()


def run_pipeline(common: list[str], tmp_path, condition: list[str], bench_conditions: list[str]) -> tuple[dict, dict]:
    """Record 6 trajectories, train 5 steps, generate at N=6/B=2 and bench; -> (generate JSON, bench rows)."""
    store, ck = tmp_path / "s", tmp_path / "ck"

    def ok(*args):
        res = runner.invoke(app, [*args, *common, "--json"])
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout)

    assert ok("record", "--out", str(store), "-n", "6")["trajectories"] == 6
    ok("train", "--store", str(store), "--out", str(ck), "--max-steps", "5",
       "--set", "train.val_every=5", "--set", "train.batch_size=8")
    out = ok("generate", *condition, "--shortcut", str(ck), "--budget", "2", "--out", str(tmp_path / "img"))
    assert out["method"] == "shortcut" and out["base_calls"] == 2 and out["shortcut_calls"] == 4
    bench = ok("bench", "--shortcut", str(ck), *bench_conditions, "--steps", "6", "--budgets", "2",
               "--num-samples", "2", "--repeats", "1", "--out", str(tmp_path / "bench"))
    rows = {r["label"]: r for r in bench["rows"]}
    assert {"vanilla-6", "vanilla-2", "cache-6/2", "shortcut-6/2"} <= set(rows)
    return out, rows
