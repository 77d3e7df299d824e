import pytest
from hypothesis import given
from hypothesis import strategies as st

from migmcut.schedule import CURVES, SCHEDULES, gamma, tokens_per_step


@given(
    num_tokens=st.integers(1, 4096),
    steps=st.integers(1, 128),
    name=st.sampled_from(SCHEDULES),
)
def test_every_token_fixed_exactly_once_and_every_step_fixes_some(num_tokens, steps, name):
    if steps > num_tokens:
        with pytest.raises(ValueError):
            tokens_per_step(num_tokens, steps, name)
        return
    if name in ("maskgit", "dimoo"):  # reference counts: where they leave a step empty, refused
        try:
            counts = tokens_per_step(num_tokens, steps, name)
        except ValueError as err:
            assert "nothing to fix" in str(err)
            return
    counts = tokens_per_step(num_tokens, steps, name)
    assert len(counts) == steps
    assert sum(counts) == num_tokens
    assert min(counts) >= 1


@pytest.mark.parametrize("name", CURVES)
def test_gamma_runs_from_all_masked_to_none(name):
    assert gamma(name, 0.0) == pytest.approx(1.0)
    assert gamma(name, 1.0) == pytest.approx(0.0, abs=1e-9)
    xs = [i / 20 for i in range(21)]
    assert all(gamma(name, a) >= gamma(name, b) for a, b in zip(xs, xs[1:]))


def test_cosine_fixes_few_tokens_first_and_many_late():
    counts = tokens_per_step(256, 16, "cosine")
    assert counts[0] < counts[-1]
    assert tokens_per_step(256, 16, "linear") == [16] * 16


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="unknown schedule"):
        tokens_per_step(16, 4, "zigzag")
