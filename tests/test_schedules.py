"""Schedules: values at their boundaries and midpoints, bounds for all inputs (hypothesis),
agreement with the reference code of Fu et al. 2019, and config errors naming the key."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings, strategies as st

from vaesweep.errors import ConfigError
from vaesweep.kl import SCHEDULES, build_schedule, build_weighting

STEPS = st.integers(0, 10**7)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@settings(max_examples=50, deadline=None)
@given(step=STEPS)
def test_every_schedule_is_bounded_and_ends_at_one(name, step):
    s = build_schedule({"name": name})
    assert 0.0 <= s(step) <= 1.0
    assert s(10**9) == pytest.approx(1.0)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_every_schedule_is_a_pure_function_of_the_step(name):
    s = build_schedule({"name": name})
    steps = [0, 1, 7, 2500, 5000, 99999, 3, 0]
    first = [s(t) for t in steps]
    assert [build_schedule({"name": name})(t) for t in steps] == first == [s(t) for t in steps]


# -- sigmoid (Bowman et al. 2016) -------------------------------------------------------
def test_sigmoid_midpoint_symmetry_and_ends():
    s = build_schedule({"name": "sigmoid", "k": 0.01, "midpoint": 1000})
    assert s(1000) == 0.5
    assert s(0) == pytest.approx(1 / (1 + math.exp(10)))
    for d in (1, 50, 400, 999):
        assert s(1000 + d) + s(1000 - d) == pytest.approx(1.0)
        assert s(1000 - d) < s(1000 - d + 1)
    assert s(10**12) == 1.0  # no overflow far out, either side
    assert build_schedule({"name": "sigmoid", "k": 50.0, "midpoint": 10**6})(0) == 0.0


@settings(max_examples=100, deadline=None)
@given(k=st.floats(1e-6, 10.0), midpoint=st.integers(0, 10**6), step=STEPS)
def test_sigmoid_bounded_and_monotone(k, midpoint, step):
    s = build_schedule({"name": "sigmoid", "k": k, "midpoint": midpoint})
    assert 0.0 <= s(step) <= s(step + 1) <= 1.0


# -- cyclical (Fu et al. 2019) ----------------------------------------------------------
def test_cyclical_boundaries_and_midpoints():
    # 4 cycles of 20 steps, rising over the first 10 of each
    lin = build_schedule({"name": "cyclical", "n_cycles": 4, "ratio": 0.5, "total_steps": 80})
    cos = build_schedule({"name": "cyclical", "n_cycles": 4, "ratio": 0.5, "total_steps": 80,
                          "shape": "cosine"})
    for c in range(4):
        t0 = 20 * c
        assert lin(t0) == cos(t0) == 0.0          # each cycle starts at 0
        assert lin(t0 + 5) == pytest.approx(0.5) and cos(t0 + 5) == pytest.approx(0.5)  # half way
        assert lin(t0 + 2) == pytest.approx(0.2)
        assert cos(t0 + 2) == pytest.approx(0.5 - 0.5 * math.cos(math.pi * 0.2))
        assert lin(t0 + 10) == lin(t0 + 19) == cos(t0 + 10) == 1.0  # then holds 1
    assert lin(80) == lin(10**6) == 1.0  # after total_steps
    start = build_schedule({"name": "cyclical", "n_cycles": 2, "ratio": 1.0, "total_steps": 20,
                            "start": 0.2})
    assert start(0) == start(10) == 0.2 and start(5) == pytest.approx(0.6)
    assert start(9) == pytest.approx(0.2 + 0.8 * 0.9)


def fu_frange_cycle_linear(n_iter, start=0.0, stop=1.0, n_cycle=4, ratio=0.5):
    """Fu et al. 2019's reference implementation (their repository's frange_cycle_linear)."""
    values = [stop] * n_iter
    period = n_iter / n_cycle
    step = (stop - start) / (period * ratio)
    for c in range(n_cycle):
        v, i = start, 0
        while v <= stop and int(i + c * period) < n_iter:
            values[int(i + c * period)] = v
            v += step
            i += 1
    return values


@pytest.mark.parametrize("n_iter,n_cycle,ratio", [(100, 4, 0.5), (1000, 4, 0.5), (120, 3, 0.8),
                                                  (90, 5, 0.3), (64, 1, 1.0)])
def test_cyclical_matches_fu_reference(n_iter, n_cycle, ratio):
    s = build_schedule({"name": "cyclical", "n_cycles": n_cycle, "ratio": ratio,
                        "total_steps": n_iter})
    ref = fu_frange_cycle_linear(n_iter, n_cycle=n_cycle, ratio=ratio)
    # the reference accumulates v += step, so it may land just below 1 where we give 1
    assert [s(t) for t in range(n_iter)] == pytest.approx(ref, abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(n_cycles=st.integers(1, 20), period=st.integers(1, 500), ratio=st.floats(1e-3, 1.0),
       start=st.floats(0.0, 1.0), shape=st.sampled_from(["linear", "cosine"]),
       step=st.integers(0, 10**5))
def test_cyclical_bounded_and_periodic(n_cycles, period, ratio, start, shape, step):
    total = n_cycles * period
    s = build_schedule({"name": "cyclical", "n_cycles": n_cycles, "ratio": ratio,
                        "total_steps": total, "shape": shape, "start": start})
    assert start - 1e-12 <= s(step) <= 1.0
    t = step % total
    if t + period < total:
        assert s(t) == s(t + period)
    assert s((step % n_cycles) * period) == pytest.approx(start)  # each cycle starts at start


# -- cosine warm-up ---------------------------------------------------------------------
def test_cosine_boundaries_and_midpoint():
    s = build_schedule({"name": "cosine", "steps": 100, "start": 0.2})
    assert s(0) == 0.2
    assert s(50) == pytest.approx(0.6)
    assert s(25) == pytest.approx(0.2 + 0.8 * (0.5 - 0.5 * math.cos(math.pi / 4)))
    assert s(100) == s(10**6) == 1.0
    assert build_schedule({"name": "cosine", "steps": 0})(0) == 1.0


@settings(max_examples=100, deadline=None)
@given(steps=st.integers(0, 10**5), start=st.floats(0.0, 1.0), step=STEPS)
def test_cosine_bounded_and_monotone(steps, start, step):
    s = build_schedule({"name": "cosine", "steps": steps, "start": start})
    assert start <= s(step) <= s(step + 1) <= 1.0


def test_schedule_multiplies_the_weight_on_optimiser_steps():
    w = build_weighting({"name": "beta", "beta": 4.0, "schedule": {
        "name": "cyclical", "n_cycles": 2, "ratio": 0.5, "total_steps": 8}}, 10, 2)
    seen = []
    for _ in range(9):
        seen.append(w.beta_eff())
        w.advance()
    assert seen == pytest.approx([0, 2, 4, 4, 0, 2, 4, 4, 4])


@pytest.mark.parametrize("cfg,key", [
    ({"name": "cyclical", "n_cycles": 0}, "kl.schedule.n_cycles"),
    ({"name": "cyclical", "n_cycles": 1.5}, "kl.schedule.n_cycles"),
    ({"name": "cyclical", "ratio": 0.0}, "kl.schedule.ratio"),
    ({"name": "cyclical", "ratio": 1.5}, "kl.schedule.ratio"),
    ({"name": "cyclical", "ratio": -0.1}, "kl.schedule.ratio"),
    ({"name": "cyclical", "total_steps": 0}, "kl.schedule.total_steps"),
    ({"name": "cyclical", "total_steps": -1}, "kl.schedule.total_steps"),
    ({"name": "cyclical", "shape": "square"}, "kl.schedule.shape"),
    ({"name": "cyclical", "start": 1.5}, "kl.schedule.start"),
    ({"name": "sigmoid", "k": 0.0}, "kl.schedule.k"),
    ({"name": "sigmoid", "k": -1.0}, "kl.schedule.k"),
    ({"name": "sigmoid", "midpoint": -5}, "kl.schedule.midpoint"),
    ({"name": "sigmoid", "slope": 1.0}, "kl.schedule.slope"),
    ({"name": "cosine", "steps": -1}, "kl.schedule.steps"),
    ({"name": "cosine", "start": "low"}, "kl.schedule.start"),
    ({"name": "warmup"}, "kl.schedule.name"),
])
def test_bad_schedule_config_names_the_key(cfg, key):
    with pytest.raises(ConfigError) as e:
        build_weighting({"name": "beta", "schedule": cfg}, 10, 2)
    assert e.value.key == key and key in str(e.value)
