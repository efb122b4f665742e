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
from vaesweep.metrics import CodeCache, betavae_score, dci, factorvae_score, mig, sap
from vaesweep.metrics._arrays import MAX_CACHED_CODES, codes_for_classes

N_TRAIN, N_TEST = 2000, 1000
SAMPLING = {"num_train": 400, "num_eval": 300, "batch_size": 32}
FV_SAMPLING = {**SAMPLING, "num_variance_estimate": 2000}


def split(data, represent, seed=0, n_train=N_TRAIN, n_test=N_TEST):
    codes, factors = codes_and_factors(data, represent, n_train + n_test, seed)
    return codes[:n_train], factors[:n_train], codes[n_train:], factors[n_train:]


def code_scores(data, represent, n_train=N_TRAIN, n_test=N_TEST) -> dict[str, float]:
    """The code scores; SAP standardised (its scale-free option: the ceiling and invariance
    tests below hold for it at any scale; the reference SAP is tested on its own)."""
    c, f, ct, ft = split(data, represent, n_train=n_train, n_test=n_test)
    d = dci(c, f, ct, ft)
    return {"mig": mig(c, f), "sap": sap(c, f, ct, ft, standardize=True), "dci_d": d["disentanglement"],
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
    assert sap(c, f, ct, ft, standardize=True) == pytest.approx(0.5, abs=0.03)


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


def _small_conv_represent():
    """A fixed random conv encoder on 64x64 images: float32 codes, like a VAE's posterior mean."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 8, stride=8), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(256, 5)).eval()
    return lambda images: net(images).detach()


@pytest.mark.parametrize("max_codes", [MAX_CACHED_CODES, 1000], ids=["dense", "bounded"])
def test_code_cache_gives_identical_scores_and_encodes_each_image_once(max_codes):
    # dSprites' grid (737,280 cells): the dense table, or a cache bounded below the draws
    from vaesweep.data.dsprites import build_dsprites

    ds = build_dsprites({"subset": 64, "progress": False})  # renders directly, writes no cache
    represent = _small_conv_represent()
    images = []

    def counted(x):
        images.append(len(x))
        return represent(x)
    fv_kwargs = dict(num_train=40, num_eval=20, batch_size=16, num_variance_estimate=300)
    bv_kwargs = dict(num_train=40, num_eval=20, batch_size=16)
    factors = ds.sample_factors(500, np.random.default_rng(1))
    plain = (mig(codes_for_classes(represent, ds, factors), factors),
             factorvae_score(represent, ds, 3, **fv_kwargs), betavae_score(represent, ds, 4, **bv_kwargs))
    cache = CodeCache(counted, ds, chunk_size=256, max_codes=max_codes)
    cached = (mig(codes_for_classes(counted, ds, factors, cache=cache), factors),
              factorvae_score(counted, ds, 3, cache=cache, **fv_kwargs),
              betavae_score(counted, ds, 4, cache=cache, **bv_kwargs))
    assert cached == plain
    # the same draws again: every code comes from the cache when it holds them all
    before = sum(images)
    again = betavae_score(counted, ds, 4, cache=cache, **bv_kwargs)
    assert again == plain[2]
    draws = 500 + 300 + 60 * 16 + 2 * 60 * 16
    if cache.dense:
        assert sum(images) == before == cache.represented < draws
    else:  # full: it keeps its first 1,000 codes and represents the rest again
        assert len(cache._keys) == max_codes and sum(images) > before


def test_code_cache_on_a_small_grid_renders_each_factor_vector_once(data):
    counted = ToyData()
    cache = CodeCache(perfect(counted), counted, chunk_size=64)
    kwargs = dict(num_train=50, num_eval=30, batch_size=16)
    a = factorvae_score(perfect(counted), counted, seed=0, cache=cache, num_variance_estimate=200, **kwargs)
    b = betavae_score(perfect(counted), counted, seed=1, cache=cache, **kwargs)
    # both scores together render the grid at most once (each alone would render most of it)
    assert counted.renders == cache.represented <= int(np.prod(counted.factor_sizes))
    assert (a, b) == (factorvae_score(perfect(data), data, seed=0, num_variance_estimate=200, **kwargs),
                      betavae_score(perfect(data), data, seed=1, **kwargs))


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
        kw = {**kwargs, **({"standardize": True} if score is betavae_score else {})}
        base = score(mixed(data, seed=2), data, seed=5, **kw)
        moved = score(transformed(mixed(data, seed=2), perm, scale, shift), data, seed=5, **kw)
        assert moved == pytest.approx(base, abs=0.02), score.__name__


def test_invariance_tests_can_fail(data):
    """The reference SAP (no standardisation) is *not* scale invariant with C=0.01: shrinking
    the latents makes the regularised SVMs give up. The invariance test above would catch
    a metric that behaved like this."""
    c, f, ct, ft = split(data, noisy_perfect(data, 0.05))
    scale = 0.01
    assert sap(c, f, ct, ft, standardize=False) - sap(scale * c, f, scale * ct, ft, standardize=False) > 0.2
    assert sap(scale * c, f, scale * ct, ft, standardize=True) == pytest.approx(
        sap(c, f, ct, ft, standardize=True), abs=1e-9)


def test_sap_and_betavae_default_to_disentanglement_libs_raw_codes(data):
    """Issue 12.3: by default SAP and the beta-VAE score are disentanglement_lib's, on the raw
    codes, in the functions and in a run's settings; standardising is an option. On noisy
    one-to-one codes at scale 0.2 the reference SAP is 0.32, the standardised one 0.69."""
    from vaesweep.metrics.evaluate import resolve_settings

    c, f, ct, ft = split(data, noisy_perfect(data, 0.05))
    s = 0.2
    raw, standardised = sap(s * c, f, s * ct, ft, standardize=False), sap(s * c, f, s * ct, ft, standardize=True)
    assert standardised - raw > 0.2
    assert sap(s * c, f, s * ct, ft) == raw
    code = lambda im: 0.05 * mixed(data, seed=2)(im)  # noqa: E731
    assert betavae_score(code, data, seed=5, **SAMPLING) == betavae_score(
        code, data, seed=5, standardize=False, **SAMPLING)
    settings = resolve_settings({})
    assert settings["sap_standardize"] is False and settings["betavae_standardize"] is False
    from omegaconf import OmegaConf

    from conftest import compose
    from vaesweep.tracking import flatten
    params = flatten(OmegaConf.to_container(compose([]), resolve=False))  # a run's params
    assert params["metrics.sap_standardize"] is False and params["metrics.betavae_standardize"] is False
    # the reference still ranks the toy codes
    n = split(data, noise(data))
    m = split(data, mixed(data))
    assert sap(*n) + 0.1 < sap(*m) < sap(c, f, ct, ft) - 0.1


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
