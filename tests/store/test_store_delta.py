"""The `delta` feature codec: closed-loop step coding, spec-only zarr chains, plain-zarr decoding,
bad input, and its size against int8 on the shipped tiny-shapes model's features."""

from __future__ import annotations

import json
import math
import shutil
import warnings

import numpy as np
import pytest
import torch
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from store_helpers import contents, one_thread
from typer.testing import CliRunner

from migmcut.cli.main import app
from migmcut.recording import record
from migmcut.store import PairDataset, TrajectoryStore
from migmcut.store.codecs import CODECS, DeltaEncoder, decode, encode_steps
from migmcut.store.inspect import info, verify
from migmcut.store.location import resolve
from migmcut.store.schema import StoreSpec
from migmcut.store.writer import StoreWriter, create_store

runner = CliRunner()
NUM = 5
# The Zarr v3 specification's codecs, plus the registered vlen-utf8 of the `string` data type (prompts).
SPEC_CODECS = {"bytes", "transpose", "blosc", "zstd", "gzip", "crc32c", "sharding_indexed", "vlen-utf8"}


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def stores(tmp_path_factory, debug_recipe, debug_base):
    root = tmp_path_factory.mktemp("delta")
    with one_thread():
        for codec in ("delta", "bf16", "int8"):
            record(debug_recipe, str(root / codec), num=NUM, batch_size=3, block_size=2, codec=codec, base=debug_base)
    return root


def invoke(*args):
    return runner.invoke(app, [*args])


# -- the codec ---------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([1e-4, 0.01, 0.1, 0.5]), st.floats(1e-3, 1e3))
def test_every_step_is_within_half_a_quantization_step_however_long_the_trajectory(seed, tol, size):
    g = torch.Generator().manual_seed(seed)
    steps = 40  # a random walk: open-loop delta coding would drift by sqrt(steps) half-steps
    x = torch.cumsum(torch.randn(2, steps, 3, 8, generator=g) * size, dim=1)
    values, step = encode_steps(x, tol)
    assert values.dtype == np.uint32 and step.shape == (2,) and (step > 0).all()
    rms0 = x[:, 0].square().mean(dim=(-2, -1)).sqrt().numpy()
    assert np.allclose(step, math.sqrt(12) * tol * rms0, rtol=1e-5)
    err = (decode(values, step, "delta") - x).abs()
    bound = torch.from_numpy(step)[:, None, None, None] / 2 + x.abs() * 2**-22  # + float32 rounding of x / s, q * s
    assert (err <= bound).all(), (err - bound).max()
    assert not (values == CODECS["delta"].fill).all(axis=-1).any()


def test_the_rms_error_is_the_tolerance_times_the_features_rms():
    x = torch.randn(4, 16, 64, 128) * 3
    for tol in (0.02, 0.1, 0.3):
        values, step = encode_steps(x, tol)
        rel = ((decode(values, step, "delta") - x).square().mean() / x.square().mean()).sqrt().item()
        assert 0.9 * tol < rel < 1.1 * tol, (tol, rel)


def test_step_by_step_encoding_equals_whole_trajectories():
    x = torch.randn(3, 2, 6, 16, 32)
    whole, step = encode_steps(x, 0.1)
    enc = DeltaEncoder(0.1)
    parts = np.stack([enc.step(x[:, :, t]) for t in range(6)], axis=2)
    assert np.array_equal(parts, whole) and np.array_equal(enc.steps(), step)


def test_zero_features_and_out_of_range_features():
    values, step = encode_steps(torch.zeros(1, 3, 4, 4), 0.1)  # RMS 0: an absolute step, decodes to 0
    assert (step > 0).all() and torch.equal(decode(values, step, "delta"), torch.zeros(1, 3, 4, 4))
    x = torch.ones(1, 2, 4, 4)
    x[0, 1, 0, 0] = 1e12  # 1e12 / (sqrt(12) * 1e-4) levels: beyond int32 deltas
    with pytest.raises(Exception, match="beyond the delta codec's range"):
        encode_steps(x, 1e-4)


# -- the store -----------------------------------------------------------------------------------
def test_every_array_chain_has_only_spec_codecs_and_opens_with_warnings_as_errors(stores):
    for codec in ("delta", "bf16", "int8"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            g = zarr.open_group(str(stores / codec), mode="r")
            for name in g.array_keys():
                meta = g[name].metadata.to_dict()
                names = {c["name"] for c in meta["codecs"]}
                for c in meta["codecs"]:
                    if c["name"] == "sharding_indexed":
                        names |= {x["name"] for x in c["configuration"]["codecs"] + c["configuration"]["index_codecs"]}
                assert names <= SPEC_CODECS, (codec, name, names)
                g[name][:1]  # reading warns about nothing either


def test_plain_zarr_decodes_a_delta_store_in_ten_lines(stores):
    """The snippet of store/README.md, verbatim: keep the two in step."""
    url = str(stores / "delta")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # --- README snippet ---
        import numpy as np
        import zarr

        g = zarr.open_group(url, mode="r")
        done = np.flatnonzero(g["complete"][:])  # only these trajectories are valid
        i = done[0]
        z = g["features"][i].astype(np.int64)  # (branches, steps, L, D) zigzag step differences
        q = np.cumsum((z >> 1) ^ -(z & 1), axis=1)  # integer levels
        h = q * g["feature_step"][i][:, None, None, None]  # float features, error <= step / 2
        # --- end ---
    ours = TrajectoryStore(url).read(int(i))["features"]
    assert np.allclose(h, ours.numpy(), rtol=1e-6, atol=0)


def test_the_store_holds_the_direct_runs_features_coded_and_reads_back_within_the_bound(stores, debug_recipe, debug_base):
    from migmcut.recording import conditions_for
    from migmcut.sampler import sample, trajectory_seed

    s = TrajectoryStore(stores / "delta")
    assert s.codec == "delta" and s.spec.tolerance == 0.1 and s.attrs["tolerance"] == 0.1
    feats = []
    sample(debug_base, conditions_for(debug_recipe, 0, [3]), [trajectory_seed(0, 3)], debug_recipe.sampler,
           observers=(lambda e: feats.append(e.features),))
    x = torch.stack(feats, 2)  # (1, branches, steps, L, D)
    values, step = encode_steps(x, 0.1)
    g = zarr.open_group(str(stores / "delta"), mode="r")
    assert np.array_equal(g["features"][3], values[0]) and np.array_equal(g["feature_step"][3], step[0])
    got = s.read(3)["features"]
    assert ((got - x[0]).abs() <= torch.from_numpy(step[0])[:, None, None, None] / 2 * (1 + 1e-5)).all()
    # pairs decode one (branch, step) alone, equal to the whole decode
    for p in PairDataset(s, [3], seed=0):
        assert torch.equal(p["h"], got[p["branch"], p["step"]]) and torch.equal(p["h_next"], got[p["branch"], p["step"] + 1])


def test_info_and_dry_run_report_the_delta_bytes(stores, tmp_path):
    summary = info(stores / "delta")
    assert summary["codec"] == "delta" and summary["tolerance"] == 0.1
    per = summary["feature_bytes_per_trajectory"]
    assert 0 < per < info(stores / "int8")["feature_bytes_per_trajectory"]
    assert set(summary["feature_bytes_per_trajectory_estimated"]) == set(CODECS)
    res = invoke("store", "info", str(stores / "delta"))
    assert res.exit_code == 0 and "tolerance 0.1" in res.stdout and "delta" in res.stdout
    out = tmp_path / "planned"
    res = invoke("record", "--recipe", "debug", "--device", "cpu", "--out", str(out), "--num", "100", "--codec", "delta",
                 "--tolerance", "0.05", "--dry-run", "--json")
    assert res.exit_code == 0, res.output
    plan = json.loads(res.stdout)
    arrays = {a["name"]: a for a in plan["arrays"]}
    assert arrays["features"]["dtype"] == "uint32" and arrays["feature_step"]["shape"] == [100, 2]
    est = plan["feature_bytes_per_trajectory_estimated"]
    assert plan["tolerance"] == 0.05 and est["delta"] < est["int8"] < est["bf16"] and not out.exists()
    coarser = json.loads(invoke("record", "--recipe", "debug", "--device", "cpu", "--out", str(out), "--num", "100",
                                "--codec", "delta", "--tolerance", "0.2", "--dry-run", "--json").stdout)
    assert coarser["feature_bytes_per_trajectory_estimated"]["delta"] < est["delta"]


def test_verify_flags_a_lost_quantization_step(stores, tmp_path):
    path = tmp_path / "s"
    shutil.copytree(stores / "delta", path)
    assert verify(path)["problems"] == []
    g = zarr.open_group(str(path), mode="r+")
    g["feature_step"][1] = np.array([np.nan, 1.0], dtype=np.float32)
    report = verify(path)
    assert report["damaged"] == [1] and "quantization steps" in report["problems"][0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--codec", "delta", "--tolerance", "0"], "tolerance must be between"),
        (["--codec", "delta", "--tolerance", "-0.1"], "tolerance must be between"),
        (["--codec", "delta", "--tolerance", "5"], "tolerance must be between"),
        (["--codec", "delta", "--tolerance", "nan"], "tolerance must be between"),
        (["--tolerance", "0.1"], "--tolerance is for --codec delta"),
    ],
)
def test_bad_tolerance_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "store"
    res = invoke("record", "--recipe", "debug", "--device", "cpu", "--out", str(out), "--num", "2", *args)
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in res.output, res.stderr
    assert res.stdout == "" and not out.exists()


@pytest.mark.parametrize(
    "store, args, message",
    [
        ("delta", ["--codec", "int8"], "codec 'delta' (this run: 'int8')"),
        ("delta", ["--codec", "delta", "--tolerance", "0.2"], "tolerance 0.1 (this run: 0.2)"),
        ("bf16", ["--codec", "delta"], "codec 'bf16' (this run: 'delta')"),
    ],
)
def test_resuming_with_another_codec_or_tolerance_is_one_line_exit_2(stores, tmp_path, store, args, message):
    path = tmp_path / "store"
    shutil.copytree(stores / store, path)
    before = contents(path)
    res = invoke("record", "--recipe", "debug", "--device", "cpu", "--out", str(path), "--num", str(NUM),
                 "--block-size", "2", *args)
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].count("this run") == 1, res.stderr  # one difference
    assert before[0] == contents(path)[0]


def test_delta_is_at_most_a_third_of_int8_on_the_shipped_tiny_shapes_features(tmp_path):
    """Trained features (the shipped tiny-shapes base), default tolerance, the store's own chains."""
    from migmcut.base import load_base
    from migmcut.recipe import load_recipe
    from migmcut.sampler import sample

    recipe = load_recipe("tiny-shapes")
    base = load_base(recipe.base)
    feats = []
    sample(base, ["a small blue square above a large green triangle", "a large red circle"], [1, 2], recipe.sampler,
           observers=(lambda e: feats.append(e.features),))
    x = torch.stack(feats, 2)  # (2, branches, steps, L, D)
    sizes = {}
    for codec in ("int8", "delta"):
        spec = StoreSpec(num=2, steps=x.shape[2], branches=x.shape[1], num_tokens=x.shape[3], feature_dim=x.shape[4],
                         codec=codec, seed=0, fingerprint="f", recipe={"name": "x"})
        loc = resolve(tmp_path / codec)
        group = create_store(loc, spec)
        from migmcut.store.codecs import encode

        values, scale = encode(x, codec)
        StoreWriter(loc, spec).write_features(0, values, scale)
        sizes[codec] = sum(group[a].nbytes_stored() for a in ("features", "feature_scale", "feature_step") if a in group)
    assert sizes["delta"] <= sizes["int8"] / 3, sizes
    assert sizes["delta"] <= x.numel() * 4 / 16, sizes  # and at most 1/16 of fp32
