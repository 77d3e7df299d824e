import pytest
import torch

from migmcut.shortcut import Shortcut, ShortcutConfig


@pytest.fixture(scope="module")
def checkpoint(debug_base, tmp_path_factory):
    """A random-weight shortcut checkpoint for the debug base, its output layer large enough to move features."""
    torch.manual_seed(0)
    net = Shortcut(ShortcutConfig(feature_dim=debug_base.feature_dim, heads=2)).eval()
    for p in net.out_proj.parameters():
        torch.nn.init.normal_(p, std=0.05)
    path = tmp_path_factory.mktemp("benchmark") / "ck"
    net.save(path, {"base_fingerprint": debug_base.fingerprint})
    return path
