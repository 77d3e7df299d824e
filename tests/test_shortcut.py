"""The shortcut's inputs are built in one place: the trainer (from store pairs) and the sampler's
policy (from the sampling state) hand it identical tensors for the same state."""

import pytest
import torch
from typer.testing import CliRunner

from migmcut.cli.main import app
from migmcut.methods.shortcut import BudgetPolicy
from migmcut.sampler import StepState
from migmcut.shortcut import Shortcut, ShortcutConfig, ShortcutInputs
from migmcut.store.reader import TrajectoryStore, collate_pairs


class Recording(Shortcut):
    def forward(self, h, *args, **kwargs):
        names = ["new_emb", "new_mask", "mask_ratio", "cond_emb", "cond_mask", "query_pos"]
        self.seen = {"h": h, **dict(zip(names, args)), **kwargs}
        return h


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("inputs") / "store"
    res = CliRunner().invoke(app, ["record", "--recipe", "debug", "--out", str(path), "--num", "2", "--codec", "bf16"])
    assert res.exit_code == 0, res.output
    return TrajectoryStore(str(path))


@pytest.mark.parametrize("t", [0, 3, 6])
def test_the_trainer_and_the_sampler_hand_the_shortcut_identical_tensors(store, debug_base, t):
    base = debug_base
    traj = store.read(1)
    pairs = {(p["branch"], p["step"]): p for p in store.pairs([1], shuffle=False)}
    trainer = ShortcutInputs(base)(collate_pairs([pairs[(0, t)], pairs[(1, t)]]))

    # the sampler's state after step t: the tokens fixed up to t, those of step t new
    order, tokens = traj["order"][None], traj["tokens"][None]
    state = StepState(t + 1, torch.where(order <= t, tokens, base.mask_id),
                      base.encode_conditions([traj["condition"]]).cat(base.null_conditions(1)),
                      order == t, (order > t).float().mean().item())
    net = Recording(ShortcutConfig(feature_dim=base.feature_dim, heads=2))
    policy = BudgetPolicy([0], net)
    policy.features = traj["features"][:, t].float()  # (branches, L, D): what the sampler carries
    policy.predict(base, state, 2)

    assert set(net.seen) == set(trainer)
    for name, value in trainer.items():
        seen = net.seen[name]
        assert (seen is None and value is None) or torch.equal(seen, value), name
    assert trainer["new_mask"].all() and trainer["h"].shape[0] == 2
