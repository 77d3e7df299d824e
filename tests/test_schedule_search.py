import itertools
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from migmcut import schedule_search as ss
from migmcut.cli.main import app
from migmcut.errors import UserError
from migmcut.placement import budget_schedule, load_schedule, save_schedules
from migmcut.shortcut import Shortcut, ShortcutConfig
from migmcut.store.reader import TrajectoryStore


def synthetic_errors(N, seed):
    """err[s, k] growing with k, with a start-dependent rate (some starts are better places)."""
    rng = np.random.default_rng(seed)
    rate = rng.uniform(0.1, 2.0, size=N)
    err = np.full((N, N), np.nan)
    for s in range(N):
        for k in range(1, N - s):
            err[s, k] = rate[s] * k ** 1.3 + rng.uniform(0, 0.1)
    return err


@pytest.mark.parametrize("N, seed", [(6, 0), (8, 1), (10, 2)])
def test_search_is_the_exact_optimum_and_no_worse_than_uniform(N, seed):
    err = synthetic_errors(N, seed)
    for B in range(1, N + 1):
        full, cost = ss.search_schedule(err, B)
        assert len(full) == B and full[0] == 0 and all(a < b for a, b in zip(full, full[1:])) and full[-1] < N
        assert cost == pytest.approx(ss.schedule_cost(err, full))
        brute = min(ss.schedule_cost(err, [0, *rest]) for rest in itertools.combinations(range(1, N), B - 1))
        assert cost == pytest.approx(brute)
        assert cost <= ss.schedule_cost(err, budget_schedule(N, B)) + 1e-12
    assert ss.search_schedule(err, N)[1] == 0.0  # every step full: nothing skipped
    for bad in (0, N + 1):
        with pytest.raises(UserError):
            ss.search_schedule(err, bad)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("ss") / "s"
    res = CliRunner().invoke(app, ["record", "--recipe", "debug", "--out", str(path), "--num", "4", "--json"])
    assert res.exit_code == 0, res.output
    return TrajectoryStore(path)


def perturbed_shortcut(base):
    torch.manual_seed(0)
    net = Shortcut(ShortcutConfig(feature_dim=base.feature_dim, heads=2)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def test_rollout_errors_shapes_and_identity_baseline(store, debug_base):
    N = store.steps
    idx = store.complete_indices()[:3]
    errors = ss.rollout_errors(store, idx, debug_base, perturbed_shortcut(debug_base), chunk=2)
    assert set(errors) == {"cache", "shortcut"}
    for err in errors.values():
        assert err.mse.shape == (N, N) and err.trajectories == 3
        assert np.isfinite(err.mse[0, 1 : N]).all() and np.isnan(err.mse[N - 1, 1])
        assert ((err.top1[np.isfinite(err.top1)] >= 0) & (err.top1[np.isfinite(err.top1)] <= 1)).all()
        d = err.to_dict()
        assert len(d["one_step"]["mse"]) == N - 1 and len(d["k_step"]["cos"]) == N - 1
    # an untrained (zero-output) shortcut is the cache exactly
    zero = Shortcut(ShortcutConfig(feature_dim=debug_base.feature_dim, heads=2)).eval()
    same = ss.rollout_errors(store, idx, debug_base, zero)
    np.testing.assert_allclose(same["shortcut"].mse, same["cache"].mse, rtol=1e-5, equal_nan=True)


def test_rollout_kl_is_of_the_guided_distribution_the_sampler_draws_from(store, debug_base):
    N = store.steps
    idx = store.complete_indices()[:3]
    errors = ss.rollout_errors(store, idx, debug_base, perturbed_shortcut(debug_base))
    for err in errors.values():
        finite = np.isfinite(err.kl)
        assert (err.kl[finite] >= -1e-6).all() and np.isnan(err.kl[N - 1, 1])
    # recomputed by hand for one (s, k): CFG-guided logits at step s + k over the masked positions
    s, k = 1, 2
    sampler = store.recipe().sampler
    w = sampler.cfg_weight(s + k)
    kl_sum, count = 0.0, 0
    for i in idx:
        traj = store.read(int(i))
        feats, mask = traj["features"], traj["order"] >= s + k
        guided = lambda f: (1 + w) * debug_base.head(f[0]) - w * debug_base.head(f[1])  # noqa: E731
        true = torch.log_softmax(guided(feats[:, s + k])[mask] / sampler.temperature, -1)
        cache = torch.log_softmax(guided(feats[:, s])[mask] / sampler.temperature, -1)
        kl_sum += (true.exp() * (true - cache)).sum().item()
        count += int(mask.sum())
    assert errors["cache"].kl[s, k] == pytest.approx(kl_sum / count, rel=1e-4)


def test_saved_schedules_round_trip_and_go_stale_with_new_weights(store, debug_base, tmp_path):
    net = perturbed_shortcut(debug_base)
    ck = tmp_path / "ck"
    net.save(ck, {"base_fingerprint": debug_base.fingerprint})
    errors = ss.rollout_errors(store, store.complete_indices(), debug_base, net)
    results = ss.search(errors["shortcut"], [2, 4])
    for r in results:
        assert r.objective <= r.uniform_objective + 1e-12
    save_schedules(ck, ss.table(results), {"store": "s"})
    assert load_schedule(ck, store.steps, 4) == results[1].full_steps
    assert load_schedule(ck, store.steps, 3) is None
    assert load_schedule(ck, 16, 4) is None
    data = json.loads((ck / "schedules.json").read_text())
    assert set(data["schedules"][str(store.steps)]) == {"2", "4"}
    with torch.no_grad():
        next(net.parameters()).add_(1.0)
    net.save(ck, {"base_fingerprint": debug_base.fingerprint})
    with pytest.raises(UserError, match="other shortcut weights"):
        load_schedule(ck, store.steps, 4)


def test_generate_takes_an_explicit_schedule(debug_recipe, debug_base):
    from migmcut.generation import generate

    out = generate(debug_recipe, ["a large red circle"], method="cache", full_steps=[0, 5], base=debug_base)
    assert out.budget == 2 and out.base_calls == 2
    with pytest.raises(UserError, match="increasing steps"):
        generate(debug_recipe, ["a large red circle"], method="cache", full_steps=[0, 9], base=debug_base)
