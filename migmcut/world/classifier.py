"""A small CNN that reads tiny-shapes scenes; its penultimate features give a Frechet distance.

`ShapesClassifier` is four conv blocks (64 -> 4 px) and a 128-d feature layer (ReLU) with one
linear head per scene attribute (see `HEADS`). It is trained on freshly rendered scenes, lightly
augmented with blur, noise and color shifts so that its features hold on VQ-decoded images.
`fd(images_a, images_b)` is the Frechet distance between the Gaussians fitted to the features
of two image sets (as FID does with Inception features), 0 for identical distributions.

    model = load_classifier()            # migmcut/weights/tiny-shapes/classifier/
    fd(real_images, generated_images)    # uint8 (N, 64, 64, 3) arrays
"""

from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from migmcut.world import shapes

WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "tiny-shapes" / "classifier"
COLORS, KINDS, SIZES = list(shapes.COLORS), list(shapes.SHAPES), list(shapes.SIZES)
# Two-shape captions name their objects in either order ("A left of B" = "B right of A"), so the
# heads use a canonical order read off the image: object 1 is the left one of a horizontal pair
# and the upper one of a vertical pair; `axis` says which. Second-object heads and `axis` are
# ignored (label -1) for one-shape scenes.
HEADS = {
    "count": 2,  # 1 or 2 objects
    "color": len(COLORS), "kind": len(KINDS), "size": len(SIZES),
    "color2": len(COLORS), "kind2": len(KINDS), "size2": len(SIZES),
    "axis": 2,  # 0: side by side (left of / right of), 1: stacked (above / below)
}


def scene_labels(caption: str) -> dict[str, int]:
    """The head targets of a caption (-1: not applicable)."""
    spec = shapes.parse_caption(caption)
    objects = list(spec.objects)
    if spec.relation in ("right of", "below"):
        objects.reverse()  # canonical order: left one first, upper one first
    y = {k: -1 for k in HEADS}
    y["count"] = len(objects) - 1
    for suffix, (size, color, kind) in zip(("", "2"), objects):
        y["color" + suffix], y["kind" + suffix] = COLORS.index(color), KINDS.index(kind)
        y["size" + suffix] = SIZES.index(size)
    if spec.relation is not None:
        y["axis"] = int(spec.relation in ("above", "below"))
    return y


def to_input(images) -> torch.Tensor:
    """uint8 (B, 64, 64, 3) numpy/tensor -> float (B, 3, 64, 64) in [-1, 1]."""
    x = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


class ShapesClassifier(nn.Module):
    def __init__(self, channels=(16, 32, 64, 96), feature_dim=128, heads=None):
        super().__init__()
        self.config = dict(channels=list(channels), feature_dim=feature_dim, heads=heads or HEADS)
        layers, c_in = [], 3
        for c in channels:  # each block halves the resolution: 64 -> 4 after four
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                       nn.MaxPool2d(2)]
            c_in = c
        self.conv = nn.Sequential(*layers)
        side = shapes.IMAGE_SIZE // 2 ** len(channels)
        # flatten (not global pooling): where the objects are matters for the relation
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(c_in * side * side, feature_dim))
        self.heads = nn.ModuleDict(
            {k: nn.Linear(feature_dim, n) for k, n in self.config["heads"].items()}
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """float (B, 3, 64, 64) in [-1, 1] (see `to_input`) -> (B, feature_dim).

        The penultimate layer before its ReLU: after it, many units are zero on every scene,
        while all pre-activations carry information (and fd separates sets slightly better)."""
        return self.fc(self.conv(x))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = F.relu(self.features(x))
        return {k: head(h) for k, head in self.heads.items()}


def load_classifier(path: str | Path | None = None) -> ShapesClassifier:
    """Load `model.safetensors` + `config.json` from a folder (default: the shipped weights)."""
    path = Path(path) if path is not None else WEIGHTS
    config = json.loads((path / "config.json").read_text())
    model = ShapesClassifier(config["channels"], config["feature_dim"], config["heads"])
    model.load_state_dict(load_file(path / "model.safetensors"))
    return model.eval().requires_grad_(False)


@functools.lru_cache(maxsize=1)
def _shipped() -> ShapesClassifier:
    return load_classifier()


@torch.no_grad()
def image_features(images, classifier: ShapesClassifier | None = None, batch=256) -> np.ndarray:
    """uint8 (N, 64, 64, 3) -> float64 features (N, feature_dim)."""
    model = (classifier if classifier is not None else _shipped()).eval()
    out = [model.features(to_input(images[i : i + batch])) for i in range(0, len(images), batch)]
    return torch.cat(out).double().numpy()


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two feature sets (N, F).

    Tr((S_a S_b)^(1/2)) is the sum of the square roots of the eigenvalues of the symmetric
    S_a^(1/2) S_b S_a^(1/2), which stays real and exact where scipy's sqrtm of the product
    warns (features that never fire make the covariances singular)."""
    mu_a, mu_b = feats_a.mean(0), feats_b.mean(0)
    s_a, s_b = np.cov(feats_a, rowvar=False), np.cov(feats_b, rowvar=False)
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(w.clip(min=0))) @ v.T
    cross = np.sqrt(np.linalg.eigvalsh(root_a @ s_b @ root_a).clip(min=0)).sum()
    fd = ((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * cross
    return float(max(fd, 0.0))  # >= 0 but for rounding


def fd(images_a, images_b, classifier: ShapesClassifier | None = None) -> float:
    """Frechet distance between two uint8 image sets (N, 64, 64, 3) in classifier features
    (default: the shipped classifier). Compare fds of equally sized sets only: the estimate
    is biased upwards for small sets (two sets of 512 rendered scenes: ~115-150)."""
    model = classifier if classifier is not None else _shipped()
    return frechet_distance(image_features(images_a, model), image_features(images_b, model))


# ----------------------------------------------------------------------------- training


def render_batch(rng: np.random.Generator, n: int) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    """n scenes, half one-shape and half two-shape, from the whole grammar: (images, labels)."""
    specs = shapes.all_specs()
    singles = [s for s in specs if len(s.objects) == 1]
    pairs = [s for s in specs if len(s.objects) == 2]
    scenes = [shapes.sample_scene(rng, singles if i < n // 2 else pairs) for i in range(n)]
    labels = [scene_labels(c) for c, _ in scenes]
    y = {k: torch.tensor([lab[k] for lab in labels]) for k in HEADS}
    return np.stack([im for _, im in scenes]), y


AUGMENT = dict(blur=0.2, noise=4.0, shift=5.0)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Light corruption of a batch in [-1, 1] (see AUGMENT): a 3x3 box blur on a fraction of the
    images, gaussian noise with sigma ~ U(0, noise) and a per-channel shift ~ U(-shift, shift),
    both in uint8 units. Kept milder than what `fd` should notice."""
    b = x.shape[0]
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    x = torch.where(torch.rand(b, 1, 1, 1, generator=g) < AUGMENT["blur"], blurred, x)
    sigma = torch.rand(b, 1, 1, 1, generator=g) * AUGMENT["noise"] / 127.5
    x = x + sigma * torch.randn(x.shape, generator=g)
    return x + (torch.rand(b, 3, 1, 1, generator=g) * 2 - 1) * AUGMENT["shift"] / 127.5


@torch.no_grad()
def accuracy(model: ShapesClassifier, images: np.ndarray, y: dict) -> dict[str, float]:
    """Per-head accuracy over the samples where the head applies."""
    model.eval()
    logits = model(to_input(images))
    return {k: float((v.argmax(-1) == y[k])[y[k] >= 0].float().mean()) for k, v in logits.items()}


def train_classifier(
    work_dir: Path, seed: int, steps: int, batch_size: int, lr: float, out_dir: Path
) -> dict[str, float]:
    """Train on freshly rendered scenes (seeded), write `model.safetensors` + `config.json` to
    out_dir and return the per-head accuracy on 1000 fresh scenes (also kept in the config).
    Progress is logged to work_dir/classifier.log; AdamW with a cosine learning-rate decay."""
    work_dir, out_dir = Path(work_dir), Path(out_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    rng, g = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    model = ShapesClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    n_params = sum(p.numel() for p in model.parameters())
    log = open(work_dir / "classifier.log", "a")
    print(f"classifier parameters {n_params}", file=log, flush=True)
    t0, cpu0 = time.time(), time.process_time()
    for step in range(steps):
        images, y = render_batch(rng, batch_size)
        x = augment(to_input(images), g)
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        model.train()
        logits = model(x)
        loss = sum(F.cross_entropy(logits[k], y[k], ignore_index=-1) for k in HEADS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            print(f"classifier step {step + 1} loss {loss.item():.4f} {time.time() - t0:.0f}s",
                  file=log, flush=True)
    eval_images, eval_y = render_batch(np.random.default_rng(seed + 1_000_000), 1000)
    acc = {k: round(v, 4) for k, v in accuracy(model, eval_images, eval_y).items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, out_dir / "model.safetensors")
    training = dict(seed=seed, steps=steps, batch_size=batch_size, lr=lr, augment=AUGMENT,
                    cpu_seconds=round(time.process_time() - cpu0))
    config = dict(model.config, parameters=n_params, accuracy=acc, training=training)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"classifier accuracy {acc}, saved {out_dir}", file=log, flush=True)
    log.close()
    return acc
