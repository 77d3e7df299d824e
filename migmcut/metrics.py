"""Quality metrics for generated images: a registry of pluggable metrics keyed by name.

    metrics = build_metrics(["prompt_accuracy", "fd"], MetricSettings(), warn=print)
    quality = measure(metrics, images, conditions)   # {"prompt_accuracy": 0.8, ..., "fd": 120.5}

A metric maps (uint8 images (N, H, W, 3), conditions) to a dict of named figures; its
`primary` figure is the one bench plots, with `higher_is_better` saying which way is better.
`evaluate` also returns a resampler: the primary figure recomputed on any multiset of the
samples (an index array), which bench uses for paired bootstrap intervals (None: no interval).

- `prompt_accuracy` (tiny-shapes): the deterministic checker's prompt accuracy plus one accuracy
  per attribute (count, color, kind, size, relation).
- `fd` (tiny-shapes): Frechet distance between the shipped world classifier's features of the
  generated images and of freshly rendered ground truth for the same prompts.
- `fid` (real bases): torchmetrics' `FrechetInceptionDistance` with a custom feature extractor:
  a TorchScript Inception network read from a local file (`fid_inception`; e.g. the
  `inception-2015-12-05.pt` of the StyleGAN FID code: float (N, 3, H, W) in [0, 255] in,
  features out with `return_features=True`), against reference images from a local directory
  or `.npz` (`fid_reference`).
- `clip_score` (text-conditioned real bases): torchmetrics' `CLIPScore` with a CLIP model and
  processor loaded by transformers from a local directory (`clip_model`).

Which metrics run by default is the base adapter's `default_metrics` (`default_metric_names`). A metric whose
weights are absent is skipped with one warning line by `build_metrics`, never faked; an unknown
metric name is a `UserError`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from migmcut.base.registry import resolve
from migmcut.errors import UserError, arg
from migmcut.world import shapes
from migmcut.world.checker import check, score, summarize
from migmcut.world.classifier import (
    WEIGHTS,
    fd,
    frechet_distance,
    image_features,
    load_classifier,
)


def reference_images(prompts: list[str], seed: int = 12345) -> np.ndarray:
    """Ground-truth renderings of the same prompts (positions drawn from `seed`)."""
    rng = np.random.default_rng(seed)
    return np.stack([shapes.render(shapes.place(shapes.parse_caption(p), rng)) for p in prompts])


def tiny_shapes_quality(images: np.ndarray, prompts: list[str], classifier=None) -> dict:

    out = dict(score(images, prompts))
    out["fd"] = float(fd(images, reference_images(prompts), classifier=classifier))
    return out


# ------------------------------------------------------------------------------ the registry


@dataclass
class MetricSettings:
    """Where metric weights live (local paths only: nothing is downloaded)."""

    fid_inception: str | None = None  # TorchScript Inception file
    fid_reference: str | None = None  # directory of reference images, or an .npz holding `images`
    clip_model: str | None = None  # directory of a transformers CLIP model + processor
    classifier: str | None = None  # tiny-shapes world classifier (default: the shipped one)
    device: str = "cpu"


class Metric:
    name: str = ""
    primary: str = ""  # the figure bench plots
    higher_is_better: bool = True

    def __init__(self, settings: MetricSettings):
        self.settings = settings

    def missing(self) -> str | None:
        """Why this metric cannot run here (absent weights), or None when it can."""
        return None

    def check(self, conditions: list) -> None:
        """UserError for a condition this metric cannot score (bench calls it before any sampling)."""

    def __call__(self, images: np.ndarray, conditions: list) -> dict:
        return self.evaluate(images, conditions)[0]

    def evaluate(self, images: np.ndarray, conditions: list) -> tuple[dict, Callable[[np.ndarray], float] | None]:
        """(figures, resampler): resampler(idx) is the primary figure over samples idx, or None."""
        raise NotImplementedError


def _prompts(conditions: list, metric: str) -> list[str]:
    if not all(isinstance(c, str) for c in conditions):
        raise UserError(f"metric {metric} needs text prompts, not class ids")
    return list(conditions)


class _ShapesMetric(Metric):
    """A tiny-shapes metric: it scores captions of the world's grammar only."""

    def check(self, conditions: list) -> None:
        for prompt in dict.fromkeys(_prompts(conditions, self.name)):
            try:
                shapes.parse_caption(prompt)
            except ValueError as err:
                raise UserError(f"metric {self.name} scores tiny-shapes captions only: {err}") from None


class PromptAccuracy(_ShapesMetric):
    name = primary = "prompt_accuracy"
    higher_is_better = True

    def evaluate(self, images, conditions):

        results = [check(im, p) for im, p in zip(images, _prompts(conditions, self.name), strict=True)]
        ok = np.array([r.ok for r in results], dtype=np.float64)
        figures = {k: v for k, v in summarize(results).items() if k.endswith("accuracy")}
        return figures, lambda idx: float(ok[idx].mean())


class ShapesFD(_ShapesMetric):
    name = primary = "fd"
    higher_is_better = False

    def missing(self):

        path = Path(self.settings.classifier).expanduser() if self.settings.classifier else WEIGHTS
        if not (path / "model.safetensors").is_file():
            return f"no world classifier weights at {path}"
        return None

    def evaluate(self, images, conditions):

        prompts = _prompts(conditions, self.name)
        classifier = load_classifier(self.settings.classifier) if self.settings.classifier else None
        if len(images) < 2:
            raise UserError(f"metric fd needs at least 2 images: raise {arg('num_samples')}")
        # the ground truth is rendered for the same prompts, so a resample takes both sides' rows
        gen = image_features(images, classifier)
        ref = image_features(reference_images(prompts), classifier)
        return {"fd": frechet_distance(gen, ref)}, lambda idx: frechet_distance(gen[idx], ref[idx])


def _load_reference_images(path: Path) -> np.ndarray:

    if path.suffix == ".npz":
        with np.load(path) as data:
            return np.asarray(data["images"], dtype=np.uint8)
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in files])


def inception_extractor(path: str | Path):
    """A torch module around a TorchScript Inception file: uint8 (N, 3, H, W) -> features (N, F)."""


    with warnings.catch_warnings():  # TorchScript is deprecated, but it is the format FID Inceptions ship in
        warnings.simplefilter("ignore", DeprecationWarning)
        net = torch.jit.load(str(path), map_location="cpu").eval()
    names = [a.name for a in net.forward.schema.arguments]
    features_kw = "return_features" in names

    class InceptionFeatures(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        @torch.no_grad()
        def forward(self, x):
            x = x.float()
            out = self.net(x, return_features=True) if features_kw else self.net(x)
            return out.flatten(1)

    return InceptionFeatures()


class FID(Metric):
    name = primary = "fid"
    higher_is_better = False

    def missing(self):
        s = self.settings
        if not s.fid_inception or not Path(s.fid_inception).expanduser().is_file():
            return f"no Inception weights (bench.fid_inception: {s.fid_inception or 'unset'})"
        if not s.fid_reference or not Path(s.fid_reference).expanduser().exists():
            return f"no reference images (bench.fid_reference: {s.fid_reference or 'unset'})"
        try:
            import torchmetrics  # noqa: F401
        except ImportError:
            return "torchmetrics is not installed"
        return None

    def evaluate(self, images, conditions):
        from torchmetrics.image.fid import FrechetInceptionDistance

        s = self.settings
        real = _load_reference_images(Path(s.fid_reference).expanduser())
        if len(real) < 2 or len(images) < 2:
            raise UserError("metric fid needs at least 2 generated and 2 reference images")
        extractor = inception_extractor(Path(s.fid_inception).expanduser())
        fid = FrechetInceptionDistance(feature=extractor, input_img_size=(3, *real.shape[1:3])).to(s.device)
        to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).to(s.device)  # noqa: E731
        for lo in range(0, len(real), 64):
            fid.update(to_t(real[lo : lo + 64]), real=True)
        for lo in range(0, len(images), 64):
            fid.update(to_t(images[lo : lo + 64]), real=False)
        return {"fid": float(fid.compute())}, None


class CLIPScoreMetric(Metric):
    name = primary = "clip_score"
    higher_is_better = True

    def missing(self):
        path = self.settings.clip_model
        if not path or not (Path(path).expanduser() / "config.json").is_file():
            return f"no local CLIP model (bench.clip_model: {path or 'unset'})"
        try:
            import torchmetrics  # noqa: F401
        except ImportError:
            return "torchmetrics is not installed"
        return None

    def evaluate(self, images, conditions):
        from torchmetrics.multimodal.clip_score import CLIPScore
        from transformers import CLIPModel, CLIPProcessor

        prompts = _prompts(conditions, self.name)
        path = str(Path(self.settings.clip_model).expanduser())

        def load():
            return CLIPModel.from_pretrained(path, local_files_only=True), CLIPProcessor.from_pretrained(
                path, local_files_only=True
            )

        metric = CLIPScore(model_name_or_path=load).to(self.settings.device)
        for lo in range(0, len(images), 32):
            batch = torch.from_numpy(np.ascontiguousarray(images[lo : lo + 32])).permute(0, 3, 1, 2)
            metric.update(batch.to(self.settings.device), prompts[lo : lo + 32])
        return {"clip_score": float(metric.compute())}, None


REGISTRY: dict[str, type[Metric]] = {
    "prompt_accuracy": PromptAccuracy,
    "fd": ShapesFD,
    "fid": FID,
    "clip_score": CLIPScoreMetric,
}

def default_metric_names(base_kind: str) -> list[str]:
    """The metrics `bench` runs unless told: the base adapter's `default_metrics`."""

    return list(resolve(base_kind).default_metrics)


def build_metrics(names, settings: MetricSettings | None = None, warn: Callable[[str], None] | None = None) -> list[Metric]:
    """Instantiate the named metrics; skip (one warning line each) those whose weights are absent."""
    settings = settings or MetricSettings()
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise UserError(f"unknown metric {unknown[0]!r}: choose from {', '.join(REGISTRY)}")
    out = []
    for name in dict.fromkeys(names):
        metric = REGISTRY[name](settings)
        reason = metric.missing()
        if reason is not None:
            if warn is not None:
                warn(f"warning: metric {name} skipped: {reason}")
            continue
        out.append(metric)
    return out


def measure(metrics: list[Metric], images: np.ndarray, conditions: list) -> dict:
    return measure_resampled(metrics, images, conditions)[0]


def measure_resampled(metrics: list[Metric], images: np.ndarray, conditions: list) -> tuple[dict, dict]:
    """(every figure, {primary figure: resampler}) for the metrics that give one."""
    quality: dict = {}
    resamplers: dict = {}
    for metric in metrics:
        figures, resampler = metric.evaluate(images, conditions)
        quality.update(figures)
        if resampler is not None:
            resamplers[metric.primary] = resampler
    return quality, resamplers
