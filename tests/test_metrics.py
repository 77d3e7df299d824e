import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from migmcut.errors import UserError
from migmcut.metrics import (
    REGISTRY, MetricSettings, build_metrics, default_metric_names, measure, reference_images,
)

PROMPTS = ["a large red circle", "a small blue square", "a small green triangle above a large yellow circle",
           "a large purple square left of a small red triangle"]


def test_defaults_depend_on_the_base_kind():
    assert default_metric_names("tiny-shapes") == ["prompt_accuracy", "fd"]
    assert default_metric_names("maskgit") == ["fid", "clip_score"]
    assert set(default_metric_names("maskgit")) <= set(REGISTRY)


def test_tiny_shapes_metrics_on_ground_truth():
    images = reference_images(PROMPTS, seed=1)
    metrics = build_metrics(["prompt_accuracy", "fd"])
    q = measure(metrics, images, PROMPTS)
    assert q["prompt_accuracy"] == 1.0 and q["relation_accuracy"] == 1.0
    assert q["fd"] >= 0
    assert [m.higher_is_better for m in metrics] == [True, False]


def test_unknown_metric_is_a_user_error():
    with pytest.raises(UserError, match="unknown metric 'psnr'"):
        build_metrics(["prompt_accuracy", "psnr"])


def test_metrics_without_weights_are_skipped_with_one_warning_each(tmp_path):
    warnings = []
    settings = MetricSettings(fid_inception=str(tmp_path / "absent.pt"), clip_model=None)
    metrics = build_metrics(["prompt_accuracy", "fid", "clip_score"], settings, warn=warnings.append)
    assert [m.name for m in metrics] == ["prompt_accuracy"]
    assert len(warnings) == 2
    assert all("\n" not in w and w.startswith("warning: metric ") and "skipped" in w for w in warnings)
    assert "fid" in warnings[0] and "clip_score" in warnings[1]


class TinyInception(torch.nn.Module):
    """A stand-in for a TorchScript Inception: float (N, 3, H, W) in [0, 255] -> (N, 8) features."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 5, stride=4)

    def forward(self, x: torch.Tensor, return_features: bool = True) -> torch.Tensor:
        return torch.relu(self.conv(x / 255.0)).mean((2, 3))


def test_fid_runs_torchmetrics_with_a_local_torchscript_extractor(tmp_path):
    pytest.importorskip("torchmetrics")
    path = tmp_path / "inception.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(TinyInception()).save(str(path))
    prompts = PROMPTS * 4
    real = reference_images(prompts, seed=2)
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    for i, im in enumerate(real):
        Image.fromarray(im).save(ref_dir / f"{i:03d}.png")
    settings = MetricSettings(fid_inception=str(path), fid_reference=str(ref_dir))
    (fid,) = build_metrics(["fid"], settings)
    same = fid(real, prompts)["fid"]
    noise = np.random.default_rng(0).integers(0, 256, real.shape, dtype=np.uint8)
    other = fid(noise, prompts)["fid"]
    assert abs(same) < 1e-2 and other > same + 1e-3
