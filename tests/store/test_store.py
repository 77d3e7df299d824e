"""The trajectory store: codecs, schema (plain zarr), reader / training pairs, info and verify."""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import torch
import zarr
from store_helpers import BATCH, BLOCK, NUM, assert_same_store, contents, one_thread
from typer.testing import CliRunner

from migmcut.cli.main import app
from migmcut.errors import StoreError
from migmcut.recording import record
from migmcut.sampler import trajectory_seed
from migmcut.store import PairDataset, TrajectoryStore, collate_pairs, pair_loader
from migmcut.store.codecs import CODECS, decode, encode, is_fill
from migmcut.store.inspect import info, verify
from migmcut.store.location import resolve
from migmcut.store.schema import StoreSpec
from migmcut.store.writer import StoreWriter, create_store

runner = CliRunner()


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="session")
def store_dir(tmp_path_factory, debug_recipe, debug_base):
    path = tmp_path_factory.mktemp("store") / "bf16"
    with one_thread():
        record(debug_recipe, str(path), num=NUM, batch_size=BATCH, block_size=BLOCK, base=debug_base)
    return path


@pytest.fixture(scope="session")
def int8_store(tmp_path_factory, debug_recipe, debug_base):
    path = tmp_path_factory.mktemp("store") / "int8"
    with one_thread():
        record(debug_recipe, str(path), num=5, batch_size=5, block_size=BLOCK, codec="int8", base=debug_base)
    return path


# -- codecs ------------------------------------------------------------------------------------
def test_bf16_and_fp16_round_trip_exactly_at_their_precision():
    x = torch.randn(3, 5, 64) * 3
    x[0, 0, :4] = torch.tensor([0.0, -0.0, 1e-30, 6e4])
    v, s = encode(x, "bf16")
    assert v.dtype == np.uint16 and s is None
    assert torch.equal(decode(v, None, "bf16"), x.to(torch.bfloat16).float())
    v, _ = encode(x, "fp16")
    assert v.dtype == np.float16
    assert torch.equal(decode(v, None, "fp16"), x.half().float())


def test_int8_error_is_within_half_a_step_of_the_per_token_scale():
    x = torch.randn(4, 7, 128) * torch.rand(4, 7, 1) * 10
    x[0, 0] = 0.0  # an all-zero token: scale 0, decodes to 0
    q, scale = encode(x, "int8")
    assert q.dtype == np.int8 and scale.shape == (4, 7) and scale.dtype == np.float32
    assert q.min() >= -127 and q.max() <= 127
    assert np.allclose(scale, x.abs().amax(-1).numpy())
    err = (decode(q, scale, "int8") - x).abs()
    bound = torch.from_numpy(scale)[..., None] / 254
    assert (err <= bound * (1 + 1e-5) + 1e-12).all()
    assert torch.equal(decode(q, scale, "int8")[0, 0], torch.zeros(128))


@settings(max_examples=200, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=16),
        elements=st.floats(-1e4, 1e4, width=32),
    )
)
def test_int8_round_trip_error_is_bounded_by_scale_over_254_for_any_features(values):
    x = torch.from_numpy(values)
    q, scale = encode(x, "int8")
    err = (decode(q, scale, "int8") - x).abs()
    bound = torch.from_numpy(scale)[..., None] / 254
    assert (err <= bound * (1 + 1e-5) + 1e-30).all()


def test_encoded_features_never_look_like_missing_chunks():
    x = torch.randn(2, 3, 16, 32)
    for name in CODECS:
        v, _ = encode(x, name)
        assert not is_fill(v, name).any()
        fill = np.full_like(v, CODECS[name].fill)
        assert is_fill(fill, name).all()


def test_unknown_codec_is_a_store_error():
    with pytest.raises(StoreError, match="unknown codec 'zip'"):
        encode(torch.zeros(2, 2), "zip")


@pytest.mark.parametrize("codec", list(CODECS))
def test_the_zarr_pipeline_is_lossless_for_every_codec(tmp_path, codec):
    """The spec-only chains (transpose, blosc/zstd, crc32c) give back exactly what was written, extremes included."""
    spec = StoreSpec(num=3, steps=4, branches=2, num_tokens=8, feature_dim=16, codec=codec, seed=0,
                     fingerprint="f", recipe={"name": "x"}, block_size=2)
    loc = resolve(tmp_path / "s")
    create_store(loc, spec)
    x = torch.randn(3, 2, 4, 8, 16) * 100
    x[1, 0, 0, 0, :4] = torch.tensor([65000.0, -65000.0, 0.0, 1e-8])
    values, scale = encode(x, codec)
    StoreWriter(loc, spec).write_features(0, values, scale)
    g = zarr.open_group(str(tmp_path / "s"), mode="r")
    assert np.array_equal(g["features"][:], values)
    if scale is not None:
        assert np.array_equal(g[CODECS[codec].scale][:], scale)
    assert g["features"].metadata.chunk_grid.chunk_shape == (1, 2, 4, 8, 16)  # the shard: one per trajectory


def test_int8_store_is_at_most_055_of_bf16_on_tiny_shapes_sized_features(tmp_path):
    """Real features of the tiny-shapes architecture (random weights: 16x16 tokens, D=128, 8 layers)."""
    from migmcut.base import load_base
    from migmcut.recipe import load_recipe
    from migmcut.sampler import sample

    recipe = load_recipe("tiny-shapes", ["base.weights=random"])
    base = load_base(recipe.base)
    steps = []
    sample(base, ["a small blue square above a large green triangle"], [1],
           recipe.sampler, observers=(lambda e: steps.append(e.features),))
    feats = torch.stack(steps, 2)  # (1, branches, steps, L, D)
    sizes = {}
    for codec in CODECS:
        spec = StoreSpec(num=1, steps=feats.shape[2], branches=2, num_tokens=256, feature_dim=128, codec=codec,
                         seed=0, fingerprint="f", recipe={"name": "x"})
        loc = resolve(tmp_path / codec)
        group = create_store(loc, spec)
        values, scale = encode(feats, codec)
        StoreWriter(loc, spec).write_features(0, values, scale)
        sizes[codec] = sum(group[a].nbytes_stored() for a in ("features", "feature_scale", "feature_step") if a in group)
    assert sizes["int8"] <= 0.55 * sizes["bf16"], sizes
    assert sizes["bf16"] < feats.numel() * 2  # compression does something


# -- the recorded store, read with plain zarr --------------------------------------------------
def test_store_schema_with_plain_zarr(store_dir, debug_recipe, debug_base):
    g = zarr.open_group(str(store_dir), mode="r")
    meta = g.attrs["migmcut"]
    L, D, N = debug_base.num_tokens, debug_base.feature_dim, debug_recipe.sampler.steps
    assert meta["format"] == "migmcut-trajectories" and meta["schema_version"] == 1
    assert meta["fingerprint"] == debug_base.fingerprint and meta["codec"] == "bf16"
    assert (meta["num"], meta["steps"], meta["branches"], meta["num_tokens"], meta["feature_dim"]) == (NUM, N, 2, L, D)
    assert meta["recipe"]["name"] == "debug" and meta["recipe"]["sampler"]["steps"] == N
    assert meta["sampler"]["cfg"] == debug_recipe.sampler.cfg and meta["block_size"] == BLOCK
    assert g["features"].shape == (NUM, 2, N, L, D) and g["features"].dtype == np.uint16
    assert g["features"].attrs["logical_dtype"] == "bfloat16"
    assert g["tokens"].shape == (NUM, L) and g["order"].shape == (NUM, L)
    assert g["prompts"].shape == (NUM,) and g["seeds"].shape == (NUM,) and g["complete"][:].all()
    assert "feature_scale" not in g
    assert list(g["seeds"][:]) == [trajectory_seed(0, i) for i in range(NUM)]
    # one shard file per trajectory
    assert sorted(p.name for p in (store_dir / "features" / "c").iterdir()) == sorted(str(i) for i in range(NUM))


def test_store_matches_a_direct_sampler_run(store_dir, debug_recipe, debug_base):
    from migmcut.recording import conditions_for
    from migmcut.sampler import sample

    g = zarr.open_group(str(store_dir), mode="r")
    i = 5
    prompt = conditions_for(debug_recipe, 0, [i])[0]
    assert g["prompts"][i] == prompt
    events = []
    res = sample(debug_base, [prompt], [trajectory_seed(0, i)], debug_recipe.sampler, observers=(events.append,))
    assert np.array_equal(g["tokens"][i], res.tokens[0].numpy())
    assert np.array_equal(g["order"][i], res.order[0].numpy())
    stored = decode(g["features"][i], None, "bf16")
    want = torch.stack([e.features[0] for e in events], 1)  # (branches, steps, L, D)
    assert torch.equal(stored, want.to(torch.bfloat16).float())


def test_prompts_depend_only_on_run_seed_and_index(debug_recipe):
    from migmcut.recording import conditions_for
    from migmcut.world import shapes

    a = conditions_for(debug_recipe, 0, range(40))
    assert conditions_for(debug_recipe, 0, [7, 3]) == [a[7], a[3]]
    assert conditions_for(debug_recipe, 1, range(40)) != a
    train = {shapes.caption(s) for s in shapes.split_specs(False)}
    assert set(a) <= train
    assert any(" of " in p for p in a) and any(" of " not in p for p in a)


# -- reader ------------------------------------------------------------------------------------
def test_trajectory_store_metadata_and_split(store_dir):
    s = TrajectoryStore(store_dir)
    assert (s.num, s.codec, s.branches, s.condition_kind) == (NUM, "bf16", 2, "prompts")
    assert list(s.complete_indices()) == list(range(NUM))
    train, val = s.split(0.25, seed=3)
    assert set(train).isdisjoint(val) and sorted(set(train) | set(val)) == list(range(NUM))
    assert len(val) >= 1
    assert [list(x) for x in s.split(0.25, seed=3)] == [list(train), list(val)]
    assert len(s.split(0.0)[1]) == 0
    assert s.recipe().name == "debug"
    with pytest.raises(Exception, match="fraction"):
        s.split(1.5)


def test_read_samples_gives_each_trajectorys_condition_seed_and_tokens_as_read_does(store_dir):
    s = TrajectoryStore(store_dir)
    picked = [3, 0, 5]
    conditions, seeds, tokens = s.read_samples(picked)
    assert tokens.dtype == np.int64 and tokens.shape == (3, s.num_tokens)
    for k, i in enumerate(picked):
        whole = s.read(i)
        assert conditions[k] == whole["condition"] and isinstance(conditions[k], str)
        assert seeds[k] == whole["seed"] and isinstance(seeds[k], int)
        assert np.array_equal(tokens[k], whole["tokens"].numpy())


def test_windows_are_runs_of_consecutive_pairs_of_one_trajectory_and_branch(store_dir):
    """`window=k` (unrolled training): each item is the k pairs t .. t+k-1 of one trajectory and branch."""
    s = TrajectoryStore(store_dir)
    N, k = s.steps, 3
    data = PairDataset(s, seed=0, window=k)
    windows = list(data)
    assert len(windows) == len(data) == NUM * 2 * (N - k)
    for w in windows:
        assert len(w) == k and len({(p["index"], p["branch"]) for p in w}) == 1
        assert [p["step"] for p in w] == list(range(w[0]["step"], w[0]["step"] + k))
        for a, b in zip(w, w[1:]):
            assert torch.equal(a["h_next"], b["h"])
    batches = collate_pairs(windows[:5])
    assert len(batches) == k and all(b["h"].shape[0] == 5 for b in batches)
    assert torch.equal(batches[1]["step"], batches[0]["step"] + 1)
    with pytest.raises(Exception, match="window"):
        PairDataset(s, window=N)


def test_pairs_are_consistent_with_the_recorded_run(store_dir):
    s = TrajectoryStore(store_dir)
    N = s.steps
    pairs = list(PairDataset(s, seed=0))
    assert len(pairs) == NUM * 2 * (N - 1)
    assert Counter((p["index"], p["branch"], p["step"]) for p in pairs) == Counter(
        (i, b, t) for i in range(NUM) for b in range(2) for t in range(N - 1))
    by_key = {(p["index"], p["branch"], p["step"]): p for p in pairs}
    for i in (0, 7):
        traj = s.read(i)
        order, tokens = traj["order"], traj["tokens"]
        for b in range(2):
            for t in range(N - 1):
                p = by_key[(i, b, t)]
                assert torch.equal(p["h"], traj["features"][b, t])
                assert torch.equal(p["h_next"], traj["features"][b, t + 1])
                if t + 1 < N - 1:
                    assert torch.equal(p["h_next"], by_key[(i, b, t + 1)]["h"])
                pos = torch.nonzero(order == t).squeeze(1)
                assert torch.equal(p["new_pos"], pos) and torch.equal(p["new_ids"], tokens[pos])
                assert torch.equal(p["loss_mask"], order > t)
                assert p["mask_ratio"] == pytest.approx((order > t).float().mean().item())
                assert p["condition"] == traj["condition"]
    assert pairs[0]["h"].dtype == torch.float32 and pairs[0]["h"].shape == (s.num_tokens, s.feature_dim)


def test_pair_order_is_deterministic_per_seed_and_epoch(store_dir):
    def keys(**kw):
        return [(p["index"], p["branch"], p["step"]) for p in PairDataset(store_dir, **kw)]

    a = keys(seed=1, epoch=0)
    assert a == keys(seed=1, epoch=0)
    assert a != keys(seed=1, epoch=1) and sorted(a) == sorted(keys(seed=1, epoch=1))
    assert a != keys(seed=2, epoch=0)
    plain = keys(shuffle=False)
    assert plain == sorted(plain, key=lambda k: (k[0], k[1], k[2]))
    # pairs really are mixed across the buffered trajectories
    assert len({i for i, _, _ in a[:20]}) > 3
    ds = PairDataset(store_dir, seed=1, epochs=2)
    assert len(list(ds)) == 2 * len(a)


def test_ddp_ranks_get_disjoint_trajectories(store_dir):
    def traj(rank, world, even):
        return {p["index"] for p in PairDataset(store_dir, seed=4, rank=rank, world=world, even=even, branches=[0])}

    r0, r1 = traj(0, 2, False), traj(1, 2, False)
    assert r0.isdisjoint(r1) and r0 | r1 == set(range(NUM))
    a, b, c = traj(0, 5, True), traj(1, 5, True), traj(4, 5, True)
    assert len(a) == len(b) == len(c) == NUM // 5 and not (a & b) and not (b & c)
    assert len(PairDataset(store_dir, rank=0, world=5)) == (NUM // 5) * 2 * 7


def test_collate_pads_new_tokens(store_dir):
    pairs = list(PairDataset(store_dir, seed=0, shuffle=False, branches=[1]))[:7]  # steps 0..6: varying M
    batch = collate_pairs(pairs)
    M = max(len(p["new_ids"]) for p in pairs)
    assert batch["h"].shape == (7, 256, 32) and batch["h_next"].shape == (7, 256, 32)
    assert batch["new_ids"].shape == batch["new_pos"].shape == batch["new_mask"].shape == (7, M)
    for k, p in enumerate(pairs):
        m = len(p["new_ids"])
        assert batch["new_mask"][k].sum() == m
        assert torch.equal(batch["new_ids"][k, :m], p["new_ids"]) and torch.equal(batch["new_pos"][k, :m], p["new_pos"])
        assert (batch["new_ids"][k, m:] == 0).all()
    assert batch["mask_ratio"].dtype == torch.float32 and batch["loss_mask"].shape == (7, 256)
    assert batch["branch"].tolist() == [1] * 7 and batch["step"].tolist() == list(range(7))
    assert isinstance(batch["condition"], list) and len(batch["condition"]) == 7


def test_two_spawned_workers_yield_the_same_pairs_as_none(store_dir):
    def multiset(workers):
        loader = pair_loader(PairDataset(store_dir, seed=2, buffer=4), batch_size=10, num_workers=workers)
        out = Counter()
        for batch in loader:
            for k in range(len(batch["index"])):
                out[(int(batch["index"][k]), int(batch["branch"][k]), int(batch["step"][k]),
                     float(batch["h"][k].sum()), float(batch["h_next"][k].sum()))] += 1
        return out

    assert multiset(2) == multiset(0)


def test_reader_skips_incomplete_and_reports_damage(store_dir, tmp_path):
    path = tmp_path / "s"
    shutil.copytree(store_dir, path)
    g = zarr.open_group(str(path), mode="r+")
    g["complete"][4:8] = False  # block 1 "still being written"
    (path / "features" / "c" / "9").rename(tmp_path / "lost")
    s = TrajectoryStore(path)
    assert 5 not in s.complete_indices() and len(s.complete_indices()) == NUM - 4
    assert not {p["index"] for p in PairDataset(s, indices=[0, 1, 2, 3])} - {0, 1, 2, 3}
    with pytest.raises(StoreError, match="trajectory 5 is not complete"):
        s.read(5)
    with pytest.raises(StoreError, match="trajectory 9 has missing chunks"):
        s.read(9)


def test_int8_store_reads_back_within_the_bound(int8_store, debug_recipe, debug_base):
    from migmcut.recording import conditions_for
    from migmcut.sampler import sample

    g = zarr.open_group(str(int8_store), mode="r")
    assert g["features"].dtype == np.int8 and g["feature_scale"].shape == (5, 2, 8, 256)
    events = []
    sample(debug_base, conditions_for(debug_recipe, 0, [2]), [trajectory_seed(0, 2)], debug_recipe.sampler,
           observers=(events.append,))
    want = torch.stack([e.features[0] for e in events], 1)
    got = TrajectoryStore(int8_store).read(2)["features"]
    bound = torch.from_numpy(g["feature_scale"][2])[..., None] / 254
    assert ((got - want).abs() <= bound * (1 + 1e-4) + 1e-7).all()
    assert verify(int8_store)["damaged"] == []


# -- info / verify -----------------------------------------------------------------------------
def test_info_summarises(store_dir):
    summary = info(store_dir)
    assert summary["num"] == summary["complete"] == NUM and summary["codec"] == "bf16"
    assert summary["recipe"] == "debug" and summary["steps"] == 8 and summary["bytes"] > 0
    assert summary["ratio_vs_fp32"] > 2
    res = runner.invoke(app, ["store", "info", str(store_dir), "--json"])
    assert res.exit_code == 0, res.output
    import json

    assert json.loads(res.stdout)["complete"] == NUM


def _damage(path, how: str, i: int) -> None:
    shard = path / "features" / "c" / str(i) / "0" / "0" / "0" / "0"
    data = shard.read_bytes()
    if how == "flip":
        shard.write_bytes(data[:50] + bytes([data[50] ^ 0xFF]) + data[51:])
    elif how == "truncate":
        shard.write_bytes(data[: len(data) // 3])
    elif how == "delete":
        shard.unlink()


def test_verify_finds_flipped_truncated_and_deleted_shards_then_repair_recomputes(store_dir, tmp_path, debug_recipe):
    path = tmp_path / "s"
    shutil.copytree(store_dir, path)
    assert verify(path)["damaged"] == []
    _damage(path, "flip", 2)
    _damage(path, "truncate", 6)
    _damage(path, "delete", 11)
    report = verify(path)
    assert report["damaged"] == [2, 6, 11] and report["checked"] == NUM
    res = runner.invoke(app, ["store", "verify", str(path)])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "2, 6, 11" in lines[0] and "Traceback" not in res.output
    res = runner.invoke(app, ["store", "verify", str(shutil.copytree(path, tmp_path / "copy")), "--repair"])
    assert res.exit_code == 0 and res.stderr == "" and "marked incomplete" in res.stdout, res.output  # done as asked
    res = runner.invoke(app, ["store", "verify", str(path), "--repair", "--json"])
    assert res.exit_code == 0, res.output
    import json

    assert json.loads(res.stdout)["damaged"] == [2, 6, 11] and json.loads(res.stdout)["repaired"]
    assert list(TrajectoryStore(path).complete_indices()) == []  # blocks 0, 1, 2 all held damage
    res = runner.invoke(app, ["record", "--recipe", "debug", "--device", "cpu", "--out", str(path), "--num", str(NUM),
                              "--block-size", str(BLOCK), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["written"] == NUM
    assert runner.invoke(app, ["store", "verify", str(path)]).exit_code == 0
    assert_same_store(path, store_dir)


def test_verify_and_info_refuse_what_is_not_a_store(tmp_path):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("hello")
    zarr.open_group(str(tmp_path / "plainzarr"), mode="w")
    for target, message in [(tmp_path / "missing", "no such store"), (tmp_path / "foreign", "not a migmcut"),
                            (tmp_path / "plainzarr", "not a migmcut")]:
        for cmd in ("info", "verify"):
            res = runner.invoke(app, ["store", cmd, str(target)])
            assert res.exit_code == 2, res.output
            lines = res.stderr.strip().splitlines()
            assert len(lines) == 1 and message in lines[0], res.stderr
        with pytest.raises(StoreError):
            TrajectoryStore(target)
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "hello"
    assert not (tmp_path / "missing").exists()


def test_contents_helper_sees_everything(store_dir):
    attrs, arrays = contents(store_dir)
    assert "migmcut" in attrs and set(arrays) == {"features", "tokens", "order", "prompts", "seeds", "complete"}


@pytest.mark.parametrize("name", ["complete", "tokens", "features"])
def test_a_store_missing_an_array_is_reported_by_verify_and_shown_by_info(store_dir, tmp_path, name):
    path = tmp_path / "s"
    shutil.copytree(store_dir, path)
    shutil.rmtree(path / name)
    res = runner.invoke(app, ["store", "verify", str(path)])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and f"array {name} is missing" in lines[0], res.output
    res = runner.invoke(app, ["store", "info", str(path)])
    assert res.exit_code == 0 and "missing" in res.stdout, res.output


def test_store_info_prints_its_table_on_stdout(store_dir):
    res = runner.invoke(app, ["store", "info", str(store_dir)])
    assert res.exit_code == 0 and res.stderr == "" and "features" in res.stdout, res.output


def test_one_rule_judges_a_store_in_record_train_and_bench(tmp_path):
    """A setting without effect on a trajectory (where full steps go) fits everywhere; a setting that
    changes them is named alike by record (refused), train (a warning) and bench (refused)."""
    from typer.testing import CliRunner

    from migmcut.cli.main import app
    from migmcut.recording import record
    from migmcut.recipe import load_recipe
    from migmcut.store.reader import TrajectoryStore
    from migmcut.training import train

    store = tmp_path / "store"
    record(load_recipe("debug", ["sampler.budget_rounding=half-even"]), str(store), num=4, batch_size=4)
    plain, other = load_recipe("debug"), load_recipe("debug", ["sampler.cfg=5"])
    assert TrajectoryStore(str(store)).sampler_difference(plain.sampler) is None
    assert TrajectoryStore(str(store)).sampler_difference(other.sampler).startswith("sampler.cfg")

    assert record(plain, str(store), num=4, batch_size=4).written == 0  # resumes: nothing left to do
    assert train(plain, str(store), tmp_path / "a", max_steps=2).sampler_warning is None
    run = CliRunner().invoke
    ok = run(app, ["bench", "--recipe", "debug", "--set", "train.val_fraction=0.5", "--store", str(store),
                   "--methods", "vanilla,cache", "--budgets", "2", "--out", str(tmp_path / "b"), "--json"])
    assert ok.exit_code == 0, ok.output

    with pytest.raises(StoreError, match="sampler.cfg"):
        record(other, str(store), num=4, batch_size=4)
    assert "sampler.cfg" in train(other, str(store), tmp_path / "c", max_steps=2).sampler_warning
    bad = run(app, ["bench", "--recipe", "debug", "--set", "sampler.cfg=5", "--store", str(store), "--methods",
                    "vanilla,cache", "--budgets", "2", "--out", str(tmp_path / "d")])
    assert bad.exit_code == 2 and "other sampler settings (sampler.cfg" in bad.output
