"""Procedurally rendered 64x64 images of one or two flat shapes, and their captions.

A scene is a list of one or two `Shape`s (and a relation between them when there are two).
`render(scene)` draws it; `caption(scene)` writes its prompt; `parse_caption(text)` reads a
prompt back into a `Spec` (what the checker compares a generated image against). Every draw
takes a `numpy.random.Generator`, so a dataset is a pure function of its seed.

Captions come from a small grammar:
    "a {size} {color} {shape}"
    "a {size} {color} {shape} {relation} a {size} {color} {shape}"
The caption space is split deterministically into a training part and a held-out part
(`is_heldout`), so quality is measured on prompts the base model never saw.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

import numpy as np

from migmcut.errors import quote

IMAGE_SIZE = 64
BACKGROUND = (236, 236, 236)
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 90, 210),
    "yellow": (240, 200, 30),
    "orange": (255, 127, 14),
    "purple": (140, 60, 180),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 6, "large": 12}  # half-extent in pixels: a small shape spans 12 px, a large one 24
RELATIONS = ("left of", "right of", "above", "below")
MARGIN = 2  # pixels kept free between a shape and the border, and between two shapes

# One-shape captions held out of training: each color once, each (size, shape) pair once.
HELDOUT_SINGLE = {
    ("large", "red", "triangle"),
    ("small", "green", "circle"),
    ("large", "blue", "square"),
    ("small", "yellow", "triangle"),
    ("large", "orange", "circle"),
    ("small", "purple", "square"),
}
HELDOUT_PAIR_FRACTION = 0.1


@dataclass(frozen=True)
class Shape:
    size: str
    color: str
    kind: str
    cx: float = 0.0
    cy: float = 0.0

    @property
    def words(self) -> str:
        return f"a {self.size} {self.color} {self.kind}"


@dataclass(frozen=True)
class Spec:
    """What a caption asks for: one or two (size, color, kind) triples and a relation."""

    objects: tuple[tuple[str, str, str], ...]
    relation: str | None = None


def caption(spec: Spec) -> str:
    first = "a {} {} {}".format(*spec.objects[0])
    if len(spec.objects) == 1:
        return first
    return "{} {} a {} {} {}".format(first, spec.relation, *spec.objects[1])


def parse_caption(text: str) -> Spec:
    """Read a prompt of the grammar; raise ValueError naming what does not parse."""
    words = text.strip().lower().split()
    try:
        first, rest = _parse_object(words)
        if not rest:
            return Spec((first,))
        if rest[:2] in (["left", "of"], ["right", "of"]):
            relation, rest = " ".join(rest[:2]), rest[2:]
        elif rest[0] in ("above", "below"):
            relation, rest = rest[0], rest[1:]
        else:
            raise ValueError(f"expected a relation, got {quote(rest[0])}")
        second, rest = _parse_object(rest)
        if rest:
            raise ValueError(f"unexpected words {quote(' '.join(rest))}")
        return Spec((first, second), relation)
    except (ValueError, IndexError) as err:
        raise ValueError(f"prompt {quote(text)} is not in the tiny-shapes grammar: {err}") from None


def _parse_object(words: list[str]) -> tuple[tuple[str, str, str], list[str]]:
    if len(words) < 4 or words[0] != "a":
        raise ValueError("expected 'a {size} {color} {shape}'")
    size, color, kind = words[1:4]
    if size not in SIZES or color not in COLORS or kind not in SHAPES:
        raise ValueError(f"unknown words in {' '.join(words[:4])!r}")
    return (size, color, kind), words[4:]


def all_specs() -> list[Spec]:
    """Every caption of the grammar (two shapes always have different colors)."""
    singles = [tuple(o) for o in itertools.product(SIZES, COLORS, SHAPES)]
    specs = [Spec((o,)) for o in singles]
    for a, rel, b in itertools.product(singles, RELATIONS, singles):
        if a[1] != b[1]:
            specs.append(Spec((a, b), rel))
    return specs


def is_heldout(spec: Spec) -> bool:
    if len(spec.objects) == 1:
        return spec.objects[0] in HELDOUT_SINGLE
    digest = hashlib.sha256(caption(spec).encode()).digest()
    return int.from_bytes(digest[:4], "little") / 2**32 < HELDOUT_PAIR_FRACTION


def split_specs(heldout: bool, num_objects: int | None = None) -> list[Spec]:
    return [
        s
        for s in all_specs()
        if is_heldout(s) == heldout and (num_objects is None or len(s.objects) == num_objects)
    ]


def place(spec: Spec, rng: np.random.Generator) -> list[Shape]:
    """Choose positions for the objects of a spec so that the relation holds unambiguously."""
    if len(spec.objects) == 1:
        size, color, kind = spec.objects[0]
        r = SIZES[size]
        cx, cy = rng.uniform(r + MARGIN, IMAGE_SIZE - r - MARGIN, size=2)
        return [Shape(size, color, kind, float(cx), float(cy))]
    (sa, ca, ka), (sb, cb, kb) = spec.objects
    ra, rb = SIZES[sa], SIZES[sb]
    while True:  # rejection sampling: a few tries on average
        ax, ay = rng.uniform(ra + MARGIN, IMAGE_SIZE - ra - MARGIN, size=2)
        bx, by = rng.uniform(rb + MARGIN, IMAGE_SIZE - rb - MARGIN, size=2)
        dx, dy = bx - ax, by - ay  # from a to b; image y grows downwards
        apart = max(abs(dx), abs(dy)) >= ra + rb + MARGIN  # boxes do not touch
        if not apart:
            continue
        if spec.relation in ("left of", "right of"):
            ok = abs(dx) >= 2 * abs(dy) and (dx > 0) == (spec.relation == "left of")
        else:
            ok = abs(dy) >= 2 * abs(dx) and (dy > 0) == (spec.relation == "above")
        if ok:
            return [
                Shape(sa, ca, ka, float(ax), float(ay)),
                Shape(sb, cb, kb, float(bx), float(by)),
            ]


_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] + 0.5


def shape_mask(shape: Shape) -> np.ndarray:
    r = SIZES[shape.size]
    dx, dy = _XX - shape.cx, _YY - shape.cy
    if shape.kind == "circle":
        return dx**2 + dy**2 <= r**2
    if shape.kind == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    # triangle pointing up: apex at the top centre, base along the bottom of the box
    t = (dy + r) / (2 * r)  # 0 at the apex, 1 at the base
    return (t >= 0) & (t <= 1) & (np.abs(dx) <= r * t)


def render(shapes: list[Shape]) -> np.ndarray:
    """Draw shapes on the background: uint8 array (64, 64, 3)."""
    img = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    img[:] = BACKGROUND
    for s in shapes:
        img[shape_mask(s)] = COLORS[s.color]
    return img


def sample_scene(rng: np.random.Generator, specs: list[Spec]) -> tuple[str, np.ndarray]:
    """Draw a spec uniformly from `specs`, place and render it: (caption, image)."""
    spec = specs[rng.integers(len(specs))]
    return caption(spec), render(place(spec, rng))
