"""The tiny-shapes world: grammar, renderer, checker and the fd classifier (fast, CPU)."""

import math

import numpy as np
import pytest
from scipy import ndimage

from migmcut.world import checker, classifier, shapes


def scenes(seed, n, num_objects=None):
    specs = [s for s in shapes.all_specs() if num_objects is None or len(s.objects) == num_objects]
    rng = np.random.default_rng(seed)
    captions, images = zip(*(shapes.sample_scene(rng, specs) for _ in range(n)))
    return list(captions), np.stack(images)


def test_captions_round_trip():
    specs = shapes.all_specs()
    assert len(specs) == 36 + 36 * 30 * 4  # pairs never share a color
    for spec in specs[::37]:
        assert shapes.parse_caption(shapes.caption(spec)) == spec
    with pytest.raises(ValueError):
        shapes.parse_caption("a huge red circle")


def test_rendering_is_deterministic():
    a, b = scenes(3, 20), scenes(3, 20)
    assert a[0] == b[0] and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], scenes(4, 20)[1])


@pytest.mark.parametrize("num_objects", [1, 2])
def test_checker_accepts_ground_truth(num_objects):
    captions, images = scenes(10 + num_objects, 150, num_objects)
    noisy = np.random.default_rng(0).normal(0, 8, images.shape)
    blurred = ndimage.uniform_filter(images.astype(float), size=(1, 3, 3, 1), mode="nearest")
    degraded = np.clip(blurred + noisy, 0, 255).round().astype(np.uint8)
    for imgs in (images, degraded):
        s = checker.score(imgs, captions)
        assert s["prompt_accuracy"] >= 0.98, s
        for field in ("count", "color", "kind", "size"):
            assert s[f"{field}_accuracy"] >= 0.98, s
        if num_objects == 1:
            assert s["relation_accuracy"] is None and s["n_two_shape"] == 0
        else:
            assert s["relation_accuracy"] >= 0.98 and s["n_two_shape"] == len(captions)


def test_checker_parses_a_scene():
    spec = shapes.Spec((("small", "red", "triangle"), ("large", "blue", "circle")), "above")
    image = shapes.render(shapes.place(spec, np.random.default_rng(0)))
    found = {d.color: d for d in checker.parse_image(image)}
    assert set(found) == {"red", "blue"}
    assert (found["red"].kind, found["red"].size) == ("triangle", "small")
    assert (found["blue"].kind, found["blue"].size) == ("circle", "large")
    assert found["red"].cy < found["blue"].cy


def test_checker_rejects_mismatched_prompts():
    spec = shapes.Spec((("large", "red", "circle"),))
    image = shapes.render(shapes.place(spec, np.random.default_rng(1)))
    assert checker.check(image, "a large red circle").ok
    r = checker.check(image, "a large blue circle")
    assert not r.ok and not r.color and r.count and r.kind and r.size and r.relation is None
    r = checker.check(image, "a small red circle")
    assert not r.ok and not r.size and r.color and r.kind
    r = checker.check(image, "a large red square")
    assert not r.ok and not r.kind and r.color and r.size
    r = checker.check(image, "a large red circle left of a small blue square")
    assert not r.ok and not r.count and not r.color and not r.relation

    spec = shapes.Spec((("small", "green", "square"), ("large", "purple", "triangle")), "left of")
    image = shapes.render(shapes.place(spec, np.random.default_rng(2)))
    assert checker.check(image, shapes.caption(spec)).ok
    for relation in ("right of", "above", "below"):
        r = checker.check(image, shapes.caption(shapes.Spec(spec.objects, relation)))
        assert not r.ok and r.relation is False and r.count and r.color and r.kind and r.size
    swapped = shapes.Spec(spec.objects[::-1], "left of")  # the purple triangle is on the right
    r = checker.check(image, shapes.caption(swapped))
    assert not r.ok and r.relation is False
    assert checker.check(image, shapes.caption(shapes.Spec(spec.objects[::-1], "right of"))).ok


def test_checker_rejects_empty_and_extra_objects():
    empty = shapes.render([])
    r = checker.check(empty, "a small red circle")
    assert not r.ok and not r.count and not r.color and not r.kind and not r.size
    assert checker.parse_image(empty) == []
    spec = shapes.Spec((("large", "yellow", "square"), ("small", "orange", "circle")), "below")
    two = shapes.render(shapes.place(spec, np.random.default_rng(0)))
    r = checker.check(two, shapes.caption(shapes.Spec(spec.objects[:1])))  # one of the two
    assert not r.ok and not r.count and r.color and r.kind and r.size


def test_checker_ignores_specks_and_splits_touching_shapes():
    spec = shapes.Spec((("large", "green", "circle"),))
    image = shapes.render(shapes.place(spec, np.random.default_rng(3)))
    y, x = np.argwhere(image.sum(-1) == sum(shapes.BACKGROUND))[0]  # a background pixel
    image[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2] = shapes.COLORS["red"]  # a 3x3 speck
    assert checker.check(image, "a large green circle").ok
    # a square and a triangle drawn edge to edge, as a blurry decoder might
    touching = shapes.render([shapes.Shape("large", "orange", "square", 32, 40),
                              shapes.Shape("small", "blue", "triangle", 32, 22)])
    assert checker.check(touching, "a small blue triangle above a large orange square").ok


def test_score_handles_one_shape_sets():
    captions, images = scenes(5, 10, 1)
    s = checker.score(images, captions)
    assert s["relation_accuracy"] is None and s["n"] == 10


@pytest.fixture(scope="module")
def model():
    return classifier.load_classifier()


def test_classifier_is_small_and_accurate(model):
    assert 100_000 <= sum(p.numel() for p in model.parameters()) <= 500_000
    images, y = classifier.render_batch(np.random.default_rng(123), 256)
    acc = classifier.accuracy(model, images, y)
    assert min(acc.values()) >= 0.9, acc
    assert classifier.image_features(images[:5], model).shape == (5, model.config["feature_dim"])


def test_scene_labels_use_a_canonical_order():
    a = classifier.scene_labels("a small red circle right of a large blue square")
    b = classifier.scene_labels("a large blue square left of a small red circle")
    assert a == b and a["color"] == classifier.COLORS.index("blue") and a["axis"] == 0
    assert classifier.scene_labels("a large red circle")["color2"] == -1


def test_frechet_distance_matches_closed_form():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20000, 4)), 1 + 2 * rng.normal(size=(20000, 4))
    # |mu_x - mu_y|^2 + tr(I + 4I - 2 * 2I) = 4 + 4
    assert classifier.frechet_distance(x, y) == pytest.approx(8.0, abs=0.3)


def test_fd_separates_corrupted_images(model):
    _, a = scenes(20, 256)
    _, b = scenes(21, 256)
    assert classifier.fd(a, a, model) == pytest.approx(0.0, abs=1e-3)
    same = classifier.fd(a, b, model)
    blurred = ndimage.uniform_filter(b.astype(float), size=(1, 5, 5, 1), mode="nearest")
    noise = np.random.default_rng(0).normal(0, 20, b.shape)
    corrupted = np.clip(blurred + noise, 0, 255).round().astype(np.uint8)
    worse = classifier.fd(a, corrupted, model)
    assert math.isfinite(same) and worse > 3 * same, (same, worse)
    _, singles = scenes(22, 256, num_objects=1)  # a set that misses every two-shape scene
    assert classifier.fd(a, singles, model) > 3 * same
