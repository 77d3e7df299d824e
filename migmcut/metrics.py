"""Quality metrics for generated images.

A metric maps (images, conditions) to a dict of named figures. For tiny-shapes:
`prompt_accuracy` and per-attribute accuracies from the deterministic checker, and `fd`, the
Frechet distance between classifier features of the generated images and of freshly rendered
ground truth for the same prompts.
"""

from __future__ import annotations

import numpy as np

from migmcut.world import shapes


def reference_images(prompts: list[str], seed: int = 12345) -> np.ndarray:
    """Ground-truth renderings of the same prompts (positions drawn from `seed`)."""
    rng = np.random.default_rng(seed)
    return np.stack([shapes.render(shapes.place(shapes.parse_caption(p), rng)) for p in prompts])


def tiny_shapes_quality(images: np.ndarray, prompts: list[str], classifier=None) -> dict:
    from migmcut.world.checker import score
    from migmcut.world.classifier import fd

    out = dict(score(images, prompts))
    out["fd"] = float(fd(images, reference_images(prompts), classifier=classifier))
    return out
