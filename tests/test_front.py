import numpy as np

from migmcut import front

HIGHER = {"acc": True, "fd": False}


def scores(acc_draws, fd_draws):
    acc, fd = np.asarray(acc_draws, float), np.asarray(fd_draws, float)
    return front.Scores({"acc": float(acc.mean()), "fd": float(fd.mean())}, {"acc": acc, "fd": fd})


def test_a_tie_inside_the_paired_interval_counts_as_at_least_as_good():
    rng = np.random.default_rng(0)
    shared = rng.normal(0, 0.05, 1000)  # paired rows move together across resamples
    row = scores(0.80 + shared, 500 + 100 * shared)
    tie = scores(0.79 + shared + rng.normal(0, 0.02, 1000), 505 + 100 * shared + rng.normal(0, 10, 1000))
    worse_acc = scores(0.70 + shared, 500 + 100 * shared)
    worse_fd = scores(0.80 + shared, 560 + 100 * shared + rng.normal(0, 5, 1000))
    assert front.at_least_as_good(tie, row, HIGHER)
    assert not front.at_least_as_good(worse_acc, row, HIGHER)
    assert not front.at_least_as_good(worse_fd, row, HIGHER)  # lower fd is better: 560 loses
    assert front.at_least_as_good(row, worse_fd, HIGHER)


def test_without_draws_points_decide():
    a, b = front.Scores({"acc": 0.8}), front.Scores({"acc": 0.81})
    assert front.at_least_as_good(b, a, {"acc": True}) and not front.at_least_as_good(a, b, {"acc": True})


def test_front_vanilla_is_the_cheapest_as_good_and_refinement_asks_between():
    const = lambda a, f: scores(np.full(50, a), np.full(50, f))  # noqa: E731
    vanilla = {4: const(0.6, 900), 8: const(0.85, 600), 16: const(0.9, 500)}
    row = const(0.84, 620)
    cost = {4: 0.1, 8: 0.2, 16: 0.4}
    assert front.front_vanilla(row, vanilla, cost, HIGHER) == 8
    assert front.front_vanilla(const(0.95, 400), vanilla, cost, HIGHER) is None  # better than every vanilla run
    # vanilla-5..7 may be as good too: ask for the midpoint of 4 and 8, then nothing once pinned
    assert front.steps_to_refine([row], vanilla, HIGHER) == {6}
    vanilla[6], vanilla[7] = const(0.7, 800), const(0.84, 620)
    assert front.steps_to_refine([row], vanilla, HIGHER) == set()
    assert front.front_vanilla(row, vanilla, {**cost, 6: 0.15, 7: 0.17}, HIGHER) == 7


def test_scores_centre_each_metrics_draws_on_its_point_value():
    values = np.arange(10.0)
    idx = front.bootstrap_indices(10, 200, seed=1)
    biased = lambda i: float(values[i].mean() + 3.0)  # noqa: E731  (a statistic biased upwards by resampling)
    s = front.scores({"x": 4.5}, {"x": biased}, idx)
    lo, hi = s.interval("x")
    assert lo < 4.5 < hi and abs(s.draws["x"].mean() - 4.5) < 1e-9
    assert front.scores({"x": 4.5}, {"x": biased}, None).interval("x") is None
