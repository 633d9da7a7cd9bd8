"""ProSAM: the Student-t prompt sampler (statistically), the vmapped Monte-Carlo loss, the
inference strategies and the parameters."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxvrp.learners import prosam, vrp
from tests.learners.common import BACKBONE, SAM, frozen_params, make_batch

NU = 5.0


def _draw(n_samples=4000, shape=(3, 4, 8), per="prompt", distribution="student_t", seed=0):
    rs = np.random.RandomState(seed)
    mu = rs.randn(*shape).astype(np.float32)
    sigma = np.exp(0.3 * rs.randn(*shape)).astype(np.float32)
    z = prosam.sample_prompts(
        jax.random.key(seed),
        mu,
        sigma,
        nu=NU,
        num_samples=n_samples,
        per=per,
        distribution=distribution,
    )
    return np.asarray(z, np.float64), mu, sigma


def test_samples_follow_eq5_student_t():
    z, mu, sigma = _draw()
    assert z.shape == (4000, 3, 4, 8)
    n = 8  # per="prompt": n is one prompt vector's size
    scale = sigma / np.sqrt(1 + n / NU)
    for idx in [(0, 0, 0), (1, 2, 5), (2, 3, 7)]:
        dist = stats.t(df=NU + n, loc=mu[idx], scale=scale[idx])
        assert stats.kstest(z[(slice(None), *idx)], dist.cdf).pvalue > 1e-3, idx
    # a random projection of a whole prompt vector is a t with the same shared chi^2
    w = np.random.RandomState(1).randn(n)
    proj = ((z[:, 1, 1] - mu[1, 1]) / scale[1, 1]) @ w / np.linalg.norm(w)
    assert stats.kstest(proj, stats.t(df=NU + n).cdf).pvalue > 1e-3


def test_the_typeset_eq7_would_be_rejected():
    """The test above has power: eq. 7 as typeset ((nu + n) / sqrt(delta)) fails it."""
    rs = np.random.RandomState(2)
    n, k = 8, 4000
    delta = rs.chisquare(NU + n, k)
    eps = rs.randn(k)
    wrong = (NU + n) / np.sqrt(delta) / np.sqrt(1 + n / NU) * eps
    assert stats.kstest(wrong, stats.t(df=NU + n).cdf).pvalue < 1e-6


def test_one_chi2_draw_is_shared_by_a_prompt_vector():
    """With u = (z - mu) / scale, mean(u^2) over a vector is F(n, nu + n) distributed only
    if the whole vector shares one delta; per-coordinate deltas concentrate it instead."""
    z, mu, sigma = _draw(shape=(2, 3, 16))
    n = 16
    u = (z - mu) / (sigma / np.sqrt(1 + n / NU))
    # u_i = eps_i sqrt((nu + n) / delta): mean(u^2) = (chi2_n / n) / (delta / (nu + n))
    stat = (u[:, 0, 0] ** 2).mean(axis=-1)
    assert stats.kstest(stat, stats.f(n, NU + n).cdf).pvalue > 1e-3
    # independent deltas per coordinate would give a far narrower spread
    rs = np.random.RandomState(3)
    indep = (rs.randn(4000, n) ** 2 * (NU + n) / rs.chisquare(NU + n, (4000, n))).mean(-1)
    assert stats.kstest(indep, stats.f(n, NU + n).cdf).pvalue < 1e-6


def test_per_image_sharing_uses_the_whole_prompt_set():
    z, mu, sigma = _draw(shape=(2, 3, 4), per="image")
    n = 12  # Q * C
    u = (z - mu) / (sigma / np.sqrt(1 + n / NU))
    stat = (u[:, 0] ** 2).mean(axis=(-2, -1))
    assert stats.kstest(stat, stats.f(n, NU + n).cdf).pvalue > 1e-3
    assert stats.kstest(u[:, 1, 2, 3], stats.t(df=NU + n).cdf).pvalue > 1e-3


def test_gaussian_variant():
    z, mu, sigma = _draw(distribution="gaussian")
    u = (z[:, 0, 1, 2] - mu[0, 1, 2]) / sigma[0, 1, 2]
    assert stats.kstest(u, stats.norm.cdf).pvalue > 1e-3


@pytest.fixture(scope="module")
def setup():
    config = prosam.make_config(BACKBONE, SAM, num_samples=3)
    return config, prosam.init(jax.random.key(0), config), frozen_params()


def test_parameter_count_is_vrp_plus_two_heads():
    config = prosam.make_config("resnet50_deepstem", "vit_h")
    shapes = jax.eval_shape(partial(prosam.init, config=config), jax.random.key(0))
    assert vrp.num_params(shapes) == 1_592_064 + 2 * (256 * 256 + 256)


def test_loss_is_a_vmap_not_a_loop(setup):
    """The traced program does not grow with K, and the loss equals the mean of K
    separately computed single-sample losses with the same keys."""
    config, params, frozen = setup
    batch = make_batch(seed=1)
    sizes = []
    for k in (2, 6):
        cfg = prosam.make_config(BACKBONE, SAM, num_samples=k)
        jaxpr = jax.make_jaxpr(partial(prosam.loss_fn, config=cfg))(
            params, frozen, batch, rng=jax.random.key(0)
        )
        sizes.append(len(jaxpr.eqns))
    assert sizes[0] == sizes[1]

    rng = jax.random.key(4)
    # jitted (compiled once each) rather than eager: the same numbers, a fraction of the time
    loss, _ = jax.jit(partial(prosam.loss_fn, config=config, train=False))(
        params, frozen, batch, rng=rng
    )
    r_drop, r_sample = jax.random.split(rng)
    mu, sigma = jax.jit(partial(prosam.encode_distribution, config=config, train=False))(
        params, frozen, batch, rng=r_drop
    )

    @jax.jit
    def single(key):
        emb = vrp.query_embeddings(frozen, batch, config.vrp)
        z = prosam.sample_prompts(key, mu, sigma, nu=config.nu, num_samples=1)[0]
        logits = vrp.decode_with_prompts(frozen["sam"], emb, z, (64, 64), config.vrp)
        return vrp.segmentation_loss(logits, batch["query_mask"])[0]

    singles = [float(single(key)) for key in jax.random.split(r_sample, config.num_samples)]
    assert float(loss) == pytest.approx(np.mean(singles), rel=1e-4)


def test_gradients_reach_every_parameter(setup):
    config, params, frozen = setup
    batch = make_batch(seed=2)
    grads = jax.jit(
        jax.grad(
            lambda p: prosam.loss_fn(p, frozen, batch, config=config, rng=jax.random.key(0))[0]
        )
    )(params)
    for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
        assert float(jnp.abs(g).max()) > 0, jax.tree_util.keystr(path)


def test_inference_strategies(setup):
    config, params, frozen = setup
    batch = make_batch(b=2, k=2, seed=3)
    out = {}
    for name in prosam.INFERENCE:
        cfg = prosam.make_config(BACKBONE, SAM, num_samples=5, inference=name)
        out[name] = np.asarray(
            prosam.apply(params, frozen, batch, config=cfg, rng=jax.random.key(7))
        )
        assert out[name].shape == (2, 64, 64)
    mu, _ = prosam.encode_distribution(params, frozen, batch, config=config, train=False, rng=None)
    emb = vrp.query_embeddings(frozen, batch, config.vrp)
    np.testing.assert_allclose(
        out["mean"],
        vrp.decode_with_prompts(frozen["sam"], emb, mu, (64, 64), config.vrp),
        rtol=1e-5,
        atol=1e-5,
    )
    assert np.all(out["max_logits"] >= out["mean_logits"] - 1e-6)
    union, mean_b, major = (out[k] > 0 for k in ("max_binary", "mean_binary", "majority"))
    assert np.all(major <= mean_b) and np.all(mean_b <= union)
    # with K = 5 (odd), "mean of binary masks >= 0.5" and "majority" agree
    np.testing.assert_array_equal(major, mean_b)
    with pytest.raises(ValueError, match="needs an rng"):
        prosam.apply(
            params, frozen, batch, config=prosam.make_config(BACKBONE, SAM, inference="majority")
        )
    with pytest.raises(ValueError, match="inference must be one of"):
        prosam.make_config(BACKBONE, SAM, inference="median")


def test_sigma_statistics_are_reported_and_log_sigma_is_clamped(setup):
    config, params, frozen = setup
    batch = make_batch(seed=3)
    _, parts = prosam.loss_fn(params, frozen, batch, config=config, rng=jax.random.key(0))
    _, sigma = prosam.encode_distribution(
        params, frozen, batch, config=config, train=False, rng=None
    )
    assert {"bce", "dice", "sigma_mean", "sigma_min", "sigma_max"} <= set(parts)
    # the loss's sigma is the training-mode one (dropout): compare the eval-mode statistics
    _, eval_parts = prosam.loss_fn(
        params, frozen, batch, config=config, rng=jax.random.key(0), train=False
    )
    assert float(eval_parts["sigma_min"]) == pytest.approx(float(sigma.min()), rel=1e-6)
    assert float(eval_parts["sigma_max"]) == pytest.approx(float(sigma.max()), rel=1e-6)
    assert float(eval_parts["sigma_mean"]) == pytest.approx(float(sigma.mean()), rel=1e-5)
    huge = jax.tree.map(lambda x: x, params)
    huge["log_sigma_head"] = {**params["log_sigma_head"]}
    huge["log_sigma_head"]["bias"] = jnp.full_like(params["log_sigma_head"]["bias"], 1e4)
    _, parts = prosam.loss_fn(huge, frozen, batch, config=config, rng=jax.random.key(0))
    assert float(parts["sigma_max"]) == pytest.approx(np.exp(config.log_sigma_max), rel=1e-5)
    with pytest.raises(ValueError, match="log_sigma_min"):
        prosam.make_config(BACKBONE, SAM, log_sigma_min=3.0, log_sigma_max=1.0)
