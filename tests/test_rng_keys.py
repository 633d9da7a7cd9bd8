"""Randomness keyed by the episode number, not the batch position (`jaxvrp.learners.protocol`):
dropout, ProSAM's samples and GP-SAM's points of an episode are the same in any batch, at any
position and batch size; the trainer's step is invariant to the order of its batch; the
evaluator draws fresh noise per episode, the same at any batch size. (Two hosts equal one:
tests/test_multihost.py, with dropout on.)"""

from functools import partial

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxvrp import baselines, configs, evaluate, trainer
from jaxvrp.learners import prosam, registry, vrp
from jaxvrp.learners.losses import segmentation_loss
from jaxvrp.learners.protocol import (
    FrozenSpec,
    Learner,
    example_keys,
    no_params,
    per_example,
    shot_keys,
    split_keys,
)
from tests.learners.common import BACKBONE, SAM, make_batch

EPISODES = np.array([11, 4, 30, 7], np.uint32)
SUB = np.array([2, 0])  # two of the episodes, at other positions, in a smaller batch


def _take(batch: dict, idx) -> dict:
    return {k: np.asarray(v)[idx] for k, v in batch.items()}


def _data(keys) -> np.ndarray:
    return np.asarray(jax.random.key_data(keys))


def test_key_helpers():
    rng = jax.random.key(3)
    keys = example_keys(jax.random.fold_in(rng, 5), EPISODES)
    expected = [jax.random.fold_in(jax.random.fold_in(rng, 5), int(e)) for e in EPISODES]
    np.testing.assert_array_equal(_data(keys), _data(jnp.stack(expected)))
    assert per_example(keys) and not per_example(rng) and not per_example(None)
    # one key: exactly jax.random.split (what direct callers and the parity tests rely on)
    np.testing.assert_array_equal(_data(split_keys(rng, 3)), _data(jax.random.split(rng, 3)))
    a, b = split_keys(keys)
    np.testing.assert_array_equal(_data(a[1]), _data(jax.random.split(keys[1])[0]))
    np.testing.assert_array_equal(_data(b[SUB]), _data(split_keys(keys[SUB])[1]))
    shots = shot_keys(keys, 3)  # (B * K,), example-major like vrp.shot_features
    assert shots.shape == (12,)
    np.testing.assert_array_equal(_data(shots[7]), _data(jax.random.fold_in(keys[2], 1)))
    assert shot_keys(rng, 3) is rng
    with pytest.raises(ValueError, match="key shape"):
        per_example(jax.random.split(rng, (2, 2)))
    with pytest.raises(ValueError, match=r"\[0, 2\*\*32\)"):
        trainer.model_inputs({"episode": np.array([-1, 2])})
    assert trainer.model_inputs({"episode": np.array([2**32 - 1])})["episode"].dtype == np.uint32


def test_vrp_dropout_follows_the_episode_not_the_position():
    """VRP-SAM's encoder (where its dropout is) on random features: an episode's output is
    the same in a batch of 4 and in a batch of 2 at another position, K = 2 shots each."""
    config = vrp.make_config(BACKBONE, SAM, dropout=0.5)
    params = vrp.init(jax.random.key(0), config)
    k = 2
    rs = np.random.RandomState(1)
    feats = [
        rs.randn(4 * k, *x.shape[1:]).astype(np.float32) for x in vrp.feature_placeholders(config)
    ]
    rows = lambda idx: np.concatenate([np.arange(i * k, (i + 1) * k) for i in idx])
    enc = jax.jit(
        lambda f, r: vrp.VRPEncoder(config).apply({"params": params}, *f, train=True, rng=r)
    )
    base = jax.random.key(1)
    full = np.asarray(enc(feats, shot_keys(example_keys(base, EPISODES), k)))
    part = enc([f[rows(SUB)] for f in feats], shot_keys(example_keys(base, EPISODES[SUB]), k))
    np.testing.assert_allclose(np.asarray(part), full[rows(SUB)], rtol=1e-5, atol=1e-6)
    # dropout is on: other episode numbers, other masks, other prompts
    other = np.asarray(enc(feats, shot_keys(example_keys(base, EPISODES + 100), k)))
    assert np.abs(other - full).max() > 1e-3
    x = jnp.ones((4, 2, 2, 16))
    keys = example_keys(base, EPISODES)
    np.testing.assert_array_equal(
        vrp.channel_dropout(x, 0.5, keys)[SUB], vrp.channel_dropout(x[SUB], 0.5, keys[SUB])
    )


def _dropout_loss(params, frozen, batch, *, config, rng, train=True):
    """A small learner with VRP-SAM's channel dropout between two layers."""
    del frozen, config, train
    h = jnp.tanh(batch["query_image"] @ params["w"])  # (B, H, W, 16)
    logits = vrp.channel_dropout(h, 0.5, rng) @ params["v"]  # per-example keys from the step
    return segmentation_loss(logits, batch["query_mask"], batch.get("query_ignore"))


DROPOUT = Learner(
    name="test_dropout",
    title="Dropout",
    make_config=lambda: (),
    init=lambda rng, config: {
        "w": jax.random.normal(rng, (3, 16)),
        "v": jax.random.normal(jax.random.fold_in(rng, 1), (16,)),
    },
    apply=None,
    frozen=lambda config: FrozenSpec(),
    loss_fn=_dropout_loss,
)


def test_train_step_does_not_depend_on_batch_order():
    """With dropout on, a step on a permuted batch gives the same loss and params (up to the
    order of float sums): each episode keeps its dropout masks wherever it sits."""
    batch = {**make_batch(b=4, k=1, size=32, seed=2), "episode": EPISODES}
    optimizer = optax.sgd(1.0)  # the update is the gradient: compare gradients
    params = DROPOUT.init(jax.random.key(0), ())
    state = trainer.loop.TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
    step = jax.jit(
        partial(
            trainer.train_step,
            lconfig=(),
            learner=DROPOUT,
            optimizer=optimizer,
            schedule=optax.constant_schedule(1.0),
        )
    )
    rng = jax.random.key(9)
    a, ma = step(state, batch, rng, {})
    b, mb = step(state, _take(batch, [3, 1, 0, 2]), rng, {})
    np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-6)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    # the draws do matter: other episode numbers, or another step, give another loss
    _, mc = step(state, {**batch, "episode": EPISODES + 1}, rng, {})
    _, md = step(state.replace(step=state.step + 1), batch, rng, {})
    assert abs(float(mc["loss"]) - float(ma["loss"])) > 1e-4
    assert abs(float(md["loss"]) - float(ma["loss"])) > 1e-4
    with pytest.raises(KeyError, match="episode"):
        step(state, {k: v for k, v in batch.items() if k != "episode"}, rng, {})


def test_prosam_and_gp_sam_draws_follow_the_episode():
    rs = np.random.RandomState(0)
    mu, sigma = rs.randn(4, 6, 8).astype(np.float32), np.ones((4, 6, 8), np.float32)
    keys = example_keys(jax.random.key(2), EPISODES)
    for per in ("prompt", "image"):
        draw = partial(prosam.sample_prompts, nu=5.0, num_samples=3, per=per)
        z = np.asarray(draw(keys, mu, sigma))
        assert z.shape == (3, 4, 6, 8)
        np.testing.assert_array_equal(np.asarray(draw(keys[SUB], mu[SUB], sigma[SUB])), z[:, SUB])
        assert not np.allclose(z[:, 0], z[:, 1])  # examples do not share noise
    pm = jnp.asarray(rs.rand(4, 8, 8).astype(np.float32))
    points = partial(baselines.gp_sam_prompts, num_points=3, threshold=0.5, scale=64)
    np.testing.assert_array_equal(points(pm, keys)[0][SUB], points(pm[SUB], keys[SUB])[0])


# a training-free learner whose logits are its rng's noise: what the evaluator hands out
NOISE = "test_episode_noise"


def _noise_apply(params, frozen, batch, *, config, rng=None, train=False):
    del params, frozen, config, train
    assert per_example(rng), "the evaluator passes per-example keys"
    shape = batch["query_image"].shape[1:3]
    return jax.vmap(lambda k: jax.random.normal(k, shape))(rng)


registry.register(
    Learner(
        name=NOISE,
        title="Episode noise",
        make_config=lambda: (),
        init=no_params,
        apply=_noise_apply,
        frozen=lambda config: FrozenSpec(),
        module=__name__,
    )
)


def _noise_config(data_dir, batch_size: int, episodes: int = 16) -> ml_collections.ConfigDict:
    c = configs.base(NOISE, {}, True)
    c.learner_module = __name__
    c.model = ml_collections.ConfigDict({})
    c.data.data_dir = str(data_dir)
    c.data.num_eval_episodes = episodes
    c.batch_size = batch_size
    return c


def test_evaluation_noise_is_per_episode_and_batch_size_independent(tmp_path):
    def logits_by_episode(batch_size, seed=0):
        out = {}

        def keep(batch, logits):
            for e, v, x in zip(batch["episode"], batch["valid"], logits, strict=True):
                if v:
                    out[int(e)] = x

        config = _noise_config(tmp_path.parent / "tfds", batch_size)
        evaluate.evaluate(config, rng_seed=seed, on_batch=keep)
        return out

    small, large = logits_by_episode(8), logits_by_episode(16)
    assert sorted(small) == sorted(large) == list(range(16))
    for e in small:
        np.testing.assert_array_equal(small[e], large[e])
    assert not np.allclose(small[0], small[1])  # fresh noise for every episode
    assert not np.allclose(logits_by_episode(8, seed=1)[0], small[0])  # and from the seed
