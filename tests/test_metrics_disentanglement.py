"""MIG, SAP, DCI, FactorVAE and beta-VAE scores: perfect codes score ~1, codes that ignore
the factors ~0 (chance for the two classifier scores), codes mixing two factors in between,
and every score is invariant to permuting and rescaling latents."""
from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_metrics_toys import ToyData, codes_and_factors, mixed, noise, noisy_perfect, perfect, transformed
from vaesweep.metrics import betavae_score, dci, factorvae_score, mig, sap

N_TRAIN, N_TEST = 2000, 1000
SAMPLING = {"num_train": 400, "num_eval": 300, "batch_size": 32}
FV_SAMPLING = {**SAMPLING, "num_variance_estimate": 2000}


def split(data, represent, seed=0, n_train=N_TRAIN, n_test=N_TEST):
    codes, factors = codes_and_factors(data, represent, n_train + n_test, seed)
    return codes[:n_train], factors[:n_train], codes[n_train:], factors[n_train:]


def code_scores(data, represent, n_train=N_TRAIN, n_test=N_TEST) -> dict[str, float]:
    c, f, ct, ft = split(data, represent, n_train=n_train, n_test=n_test)
    d = dci(c, f, ct, ft)
    return {"mig": mig(c, f), "sap": sap(c, f, ct, ft), "dci_d": d["disentanglement"],
            "dci_c": d["completeness"], "dci_i": d["informativeness"]}


@pytest.fixture(scope="module")
def data():
    return ToyData()


@pytest.fixture(scope="module")
def scores(data):
    return {
        "perfect": code_scores(data, noisy_perfect(data, 0.05)),
        "noise": code_scores(data, noise(data)),
        "mixed": code_scores(data, mixed(data)),
    }


@pytest.mark.parametrize("name", ["mig", "dci_d", "dci_c", "dci_i"])
def test_perfect_codes_score_near_one(scores, name):
    assert scores["perfect"][name] > 0.9, scores["perfect"]


def test_perfect_codes_score_sap_near_its_maximum(scores, data):
    # SAP is the accuracy gap to the second-best latent, which guesses at chance (~1/K with
    # balanced class weights), so with discrete factors its maximum is mean(1 - 1/K): 0.71 here
    ceiling = np.mean([1 - 1 / k for k in data.factor_sizes])
    assert scores["perfect"]["sap"] > ceiling - 0.05, scores["perfect"]


def test_sap_ceiling_for_binary_factors_is_one_half():
    binary = ToyData((2, 2, 2))
    c, f, ct, ft = split(binary, noisy_perfect(binary, 0.05))
    assert sap(c, f, ct, ft) == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize("name", ["mig", "sap", "dci_d", "dci_c"])
def test_noise_codes_score_near_zero(scores, name):
    assert scores["noise"][name] < 0.05, scores["noise"]


def test_noise_informativeness_is_chance(scores, data):
    chance = np.mean([1 / s for s in data.factor_sizes])
    assert scores["noise"]["dci_i"] < chance + 0.05


@pytest.mark.parametrize("name", ["mig", "sap", "dci_d", "dci_c"])
def test_mixed_codes_score_in_between(scores, name):
    assert scores["noise"][name] + 0.1 < scores["mixed"][name] < scores["perfect"][name] - 0.1, scores


def test_perfect_discrete_codes_give_mig_one():
    rng = np.random.default_rng(1)
    factors = rng.integers(0, [3, 6, 10], size=(5000, 3))
    # below 1 only by the plug-in MI bias of independent latents, ~(K-1)(L-1)/(2n) nats
    assert mig(factors.astype(float), factors) == pytest.approx(1.0, abs=0.005)


def test_mig_matches_hand_computation():
    # latent 0 copies factor 0; latent 1 copies it with half the classes merged
    f = np.repeat(np.arange(4), 250)[:, None]
    codes = np.stack([f[:, 0], f[:, 0] // 2], axis=1).astype(float)
    # I(f; z0) = H(f) = log 4, I(f; z1) = log 2: gap / H = (log 4 - log 2) / log 4 = 0.5
    assert mig(codes, f) == pytest.approx(0.5, abs=1e-9)


def test_dci_of_known_importance_matrix():
    from vaesweep.metrics.disentanglement.dci import completeness_score, disentanglement_score

    eye = np.eye(3)
    assert disentanglement_score(eye) == pytest.approx(1.0)
    assert completeness_score(eye) == pytest.approx(1.0)
    uniform = np.ones((3, 3))
    assert disentanglement_score(uniform) == pytest.approx(0.0, abs=1e-9)
    # one latent holds every factor: completeness 1, disentanglement 0
    one = np.zeros((3, 3))
    one[0] = 1.0
    assert completeness_score(one) == pytest.approx(1.0)
    assert disentanglement_score(one) == pytest.approx(0.0, abs=1e-9)


# -- sampling scores -------------------------------------------------------------------------
@pytest.mark.parametrize("score, kwargs", [(factorvae_score, FV_SAMPLING), (betavae_score, SAMPLING)])
def test_sampling_scores(data, score, kwargs):
    chance = 1 / len(data.factor_sizes)
    good = score(perfect(data), data, seed=0, **kwargs)
    bad = score(noise(data), data, seed=0, **kwargs)
    mid = score(mixed(data), data, seed=0, **kwargs)
    assert good > 0.95
    assert bad < chance + 0.1
    assert bad + 0.1 < mid < good - 0.1, (bad, mid, good)


@pytest.mark.parametrize("score, kwargs", [(factorvae_score, FV_SAMPLING), (betavae_score, SAMPLING)])
def test_sampling_scores_are_seeded(data, score, kwargs):
    a = score(noisy_perfect(data, 0.3, seed=1), data, seed=3, **kwargs)
    b = score(noisy_perfect(data, 0.3, seed=1), data, seed=3, **kwargs)
    assert a == b


def test_dedupe_renders_each_factor_vector_once_and_changes_nothing(data):
    kwargs = dict(num_train=50, num_eval=30, batch_size=16, num_variance_estimate=200)
    counted = ToyData()
    a = factorvae_score(perfect(counted), counted, seed=0, dedupe=True, **kwargs)
    assert counted.renders <= int(np.prod(counted.factor_sizes))
    b = factorvae_score(perfect(data), data, seed=0, dedupe=False, **kwargs)
    assert a == b


def test_factorvae_prunes_collapsed_latents(data):
    # a collapsed latent (std 0.01 < 0.05) is never voted for, however small its variance ratio
    def represent(images):
        codes = perfect(data)(images).numpy()
        return np.concatenate([codes, 0.01 * np.random.default_rng(0).standard_normal((len(codes), 1))], 1)
    out = factorvae_score(represent, data, seed=0, details=True, **FV_SAMPLING)
    assert out["num_active_dims"] == len(data.factor_sizes)
    assert out["eval_accuracy"] > 0.95
    assert factorvae_score(lambda im: 0.001 * perfect(data)(im), data, seed=0, **FV_SAMPLING) == 0.0


# -- invariance: permuting and rescaling latents ---------------------------------------------
transforms = st.tuples(
    st.permutations(range(4)),
    st.lists(st.floats(0.25, 4.0), min_size=4, max_size=4),
    st.lists(st.floats(-3.0, 3.0), min_size=4, max_size=4),
)
SLOW = settings(max_examples=4, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def _transform(args):
    perm, scale, shift = args
    return np.asarray(perm), np.asarray(scale), np.asarray(shift)


@functools.lru_cache(maxsize=1)
def _base_code_scores() -> dict[str, float]:
    data = ToyData()
    return code_scores(data, mixed(data, seed=2), 1500, 750)


@SLOW
@given(transforms)
def test_code_scores_invariant_to_permutation_and_rescaling(data, args):
    perm, scale, shift = _transform(args)
    base = _base_code_scores()
    moved = code_scores(data, transformed(mixed(data, seed=2), perm, scale, shift), 1500, 750)
    for name in base:
        assert moved[name] == pytest.approx(base[name], abs=0.02), name


@SLOW
@given(transforms)
def test_sampling_scores_invariant_to_permutation_and_rescaling(data, args):
    perm, scale, shift = _transform(args)
    for score, kwargs in ((factorvae_score, FV_SAMPLING), (betavae_score, SAMPLING)):
        base = score(mixed(data, seed=2), data, seed=5, **kwargs)
        moved = score(transformed(mixed(data, seed=2), perm, scale, shift), data, seed=5, **kwargs)
        assert moved == pytest.approx(base, abs=0.02), score.__name__


def test_invariance_tests_can_fail(data):
    """The reference SAP (no standardisation) is *not* scale invariant with C=0.01: shrinking
    the latents makes the regularised SVMs give up. The invariance test above would catch
    a metric that behaved like this."""
    c, f, ct, ft = split(data, noisy_perfect(data, 0.05))
    scale = 0.01
    assert sap(c, f, ct, ft, standardize=False) - sap(scale * c, f, scale * ct, ft, standardize=False) > 0.2
    assert sap(scale * c, f, scale * ct, ft) == pytest.approx(sap(c, f, ct, ft), abs=1e-9)


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="points"):
        mig(np.zeros((10, 2)), np.zeros((9, 1), dtype=int))
    with pytest.raises(ValueError, match="NaN"):
        mig(np.full((10, 2), np.nan), np.zeros((10, 1), dtype=int))


# -- real dSprites renders -------------------------------------------------------------------
def _centroid_code(images):
    """Hand-made dSprites code: the sprite's centroid (posX, posY) and area (scale and shape)."""
    import torch

    x = images[:, 0].double()
    area = x.sum((1, 2)).clamp_min(1)
    ar = torch.arange(x.shape[-1], dtype=torch.float64)
    return torch.stack([(x.sum(1) * ar).sum(1) / area, (x.sum(2) * ar).sum(1) / area, area], 1).numpy()


def test_scores_on_dsprites_renders():
    from vaesweep.data.dsprites import build_dsprites
    from vaesweep.metrics._arrays import codes_for_classes

    ds = build_dsprites({"subset": 64, "progress": False})  # renders directly, writes no cache
    kwargs = dict(num_train=150, num_eval=100, batch_size=32)
    results = {}
    for name, represent in (("centroid", _centroid_code), ("noise", noise(ToyData((1,) * 5), latents=3))):
        factors = ds.sample_factors(1500, np.random.default_rng(1))
        codes = codes_for_classes(represent, ds, factors)
        results[name] = (factorvae_score(represent, ds, 0, num_variance_estimate=500, **kwargs),
                         betavae_score(represent, ds, 0, **kwargs), mig(codes, factors))
    fv, bv, m = results["centroid"]
    # posX and posY are read off exactly, scale and shape partly, orientation not at all
    assert fv > 0.5 and bv > 0.7 and m > 0.35, results
    fv, bv, m = results["noise"]
    assert fv < 0.35 and bv < 0.35 and m < 0.05, results


# -- factor values are not factor classes (issue 15: no silent truncation) ----------------------
def _values_and_classes(n=4000):
    """The issue's example: dSprites-like scale (0.5..1) and orientation (0..2π) values."""
    rng = np.random.default_rng(0)
    s, o = rng.integers(6, size=n), rng.integers(40, size=n)
    values = np.stack([0.5 + 0.1 * s, o * 2 * np.pi / 39], 1)
    classes = np.stack([s, o], 1)
    codes = np.stack([values[:, 0] + 0.01 * rng.normal(size=n),
                      values[:, 1] + 0.01 * rng.normal(size=n), rng.normal(size=n)], 1)
    return codes, values, classes


SCORES = {
    "mig": lambda c, f: mig(c, f),
    "sap": lambda c, f: sap(c[:3000], f[:3000], c[3000:], f[3000:]),
    "dci": lambda c, f: dci(c[:3000], f[:3000], c[3000:], f[3000:]),
}


@pytest.mark.parametrize("score", SCORES, ids=list(SCORES))
def test_factor_values_are_refused_with_what_was_given_and_what_to_do(score):
    codes, values, classes = _values_and_classes()
    SCORES[score](codes, classes)  # classes: fine
    with pytest.raises(ValueError) as e:
        SCORES[score](codes, values)
    msg = str(e.value)
    for words in ("integer factor classes", "non-integer values in column(s) 0, 1",
                  "latents_classes, not latents_values", "histogram_discretize"):
        assert words in msg, msg


def test_whole_float_factors_and_discretised_values_are_accepted():
    from vaesweep.metrics import histogram_discretize
    codes, values, classes = _values_and_classes()
    assert mig(codes, classes.astype(np.float64)) == mig(codes, classes)  # 1.0, 2.0, ... as read from a CSV
    assert 0 < mig(codes, histogram_discretize(values, num_bins=40)) <= 1


def test_factor_values_are_refused_by_the_sampling_scores_and_the_probes():
    from vaesweep.metrics import linear_probe_acc

    class ValuesData(ToyData):  # a FactorData that hands out values, not classes
        def sample_factors(self, n, rng):
            return super().sample_factors(n, rng) + 0.5

    data = ValuesData()
    with pytest.raises(ValueError, match="data.sample_factors\\(\\) must be integer factor classes"):
        factorvae_score(perfect(data), data, 0, **FV_SAMPLING)
    with pytest.raises(ValueError, match="data.sample_factors\\(\\) must be integer factor classes"):
        betavae_score(perfect(data), data, 0, **SAMPLING)
    codes = np.random.default_rng(0).normal(size=(20, 2))
    with pytest.raises(ValueError, match="train labels must be integer class labels"):
        linear_probe_acc(codes, np.linspace(0, 1, 20), codes, np.arange(20) % 2)
