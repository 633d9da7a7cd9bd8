"""SAM's training loss and prompt simulation (`jaxvrp.sam.training`)."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from jaxvrp.data.annotations import tight_box
from jaxvrp.sam import config as sam_config
from jaxvrp.sam import model, training


def test_focal_loss_equals_torchvision():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (3, 2, 9, 11)).astype(np.float32)
    target = (rng.random((3, 2, 9, 11)) < 0.3).astype(np.float32)
    expected = sigmoid_focal_loss(
        torch.from_numpy(logits), torch.from_numpy(target), alpha=0.25, gamma=2.0, reduction="none"
    ).mean(dim=(-2, -1))
    got = training.focal_loss(logits, target, np.ones_like(target), 0.25, 2.0)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-7)


def test_focal_and_dice_leave_ignored_pixels_out():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, (2, 8, 8)).astype(np.float32)
    target = (rng.random((2, 8, 8)) < 0.5).astype(np.float32)
    valid = np.ones_like(target)
    valid[:, :, 4:] = 0
    changed = logits.copy()
    changed[:, :, 4:] = 50.0  # anything on ignored pixels
    for fn in (
        lambda x: training.focal_loss(x, target, valid, 0.25, 2.0),
        lambda x: training.dice_loss(x, target, valid),
    ):
        np.testing.assert_allclose(fn(logits), fn(changed), rtol=1e-6)


def test_dice_is_zero_for_a_perfect_mask_and_near_one_for_its_complement():
    target = np.zeros((1, 16, 16), np.float32)
    target[0, 4:12, 4:12] = 1
    perfect = np.where(target > 0, 30.0, -30.0)
    assert float(training.dice_loss(perfect, target, 1.0)[0]) < 1e-6
    assert float(training.dice_loss(-perfect, target, 1.0)[0]) > 0.98


def test_sampled_points_lie_in_their_region_and_cover_it():
    region = np.zeros((2, 12, 10), bool)
    region[0, 3:5, 6:8] = True  # 4 pixels
    region[1, 11, 0] = True  # 1 pixel
    seen = set()
    for i in range(60):
        pts = np.asarray(training.sample_points(jax.random.key(i), jnp.asarray(region)))
        x, y = pts[:, 0].astype(int), pts[:, 1].astype(int)
        assert region[0, y[0], x[0]] and region[1, y[1], x[1]]
        seen.add((x[0], y[0]))
    assert len(seen) == 4
    empty = np.zeros((1, 12, 10), bool)  # falls back to any pixel
    pts = np.asarray(training.sample_points(jax.random.key(0), jnp.asarray(empty)))
    assert 0 <= pts[0, 0] < 10 and 0 <= pts[0, 1] < 12


def test_noisy_boxes_are_the_tight_box_plus_capped_noise():
    mask = np.zeros((1, 64, 64), bool)
    mask[0, 10:30, 20:60] = True
    exact = training.noisy_boxes(
        jax.random.key(0), jnp.asarray(mask), training.TrainConfig(box_noise=0.0)
    )
    np.testing.assert_array_equal(np.asarray(exact)[0], tight_box(mask[0]))
    config = training.TrainConfig(box_noise=0.1, box_noise_max=0.05)  # cap 3.2 px < 10 % of 40
    many = np.stack(
        [
            np.asarray(training.noisy_boxes(jax.random.key(i), jnp.asarray(mask), config))[0]
            for i in range(400)
        ]
    )
    assert (many >= 0).all() and (many <= 64).all()
    assert (many[:, 0] <= many[:, 2]).all() and (many[:, 1] <= many[:, 3]).all()
    # y0 is away from the border: its noise is N(0, min(0.1 * 20, 3.2) = 2)
    assert abs(many[:, 1].std() - 2.0) < 0.3 and abs(many[:, 1].mean() - 10.0) < 0.3
    # x1 = 60 is 4 px from the border: std min(0.1 * 40, 3.2) = 3.2 before clipping at 64
    assert 2.4 < many[:, 2].std() < 3.4


@pytest.fixture(scope="module")
def tiny():
    sam = sam_config.get_config("tiny_128")
    params = model.init(jax.random.key(0), sam)
    rng = np.random.default_rng(0)
    mask = np.zeros((2, 128, 128), np.float32)
    mask[0, 20:70, 30:90] = 1
    mask[1, 60:120, 10:50] = 1
    image = rng.normal(0, 1, (2, 128, 128, 3)).astype(np.float32)
    image += 2.0 * mask[..., None]  # the object is visible
    return sam, params, {"image": image, "mask": mask}


def test_frozen_parts_get_exactly_zero_gradient(tiny):
    sam, params, batch = tiny
    config = training.TrainConfig(trainable=("mask_decoder",), correction_rounds=1)
    grads = jax.jit(  # one compiled program: eager op-by-op dispatch took ~1 min here
        jax.grad(lambda p: training.loss_fn(p, batch, jax.random.key(0), sam=sam, config=config)[0])
    )(params)
    for part in ("image_encoder", "prompt_encoder"):
        assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads[part]))
    assert float(optax_norm(grads["mask_decoder"])) > 0
    labels = training.param_labels(params, config)
    assert set(jax.tree.leaves(labels["image_encoder"])) == {"frozen"}
    assert set(jax.tree.leaves(labels["mask_decoder"])) == {"train"}


def optax_norm(tree):
    return jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(tree)))


def test_rounds_and_metrics(tiny):
    sam, params, batch = tiny
    for rounds in (0, 2):
        config = training.TrainConfig(correction_rounds=rounds)
        loss_fn = jax.jit(partial(training.loss_fn, sam=sam, config=config))
        loss, m = loss_fn(params, batch, jax.random.key(0))
        names = {"point_iou", "box_iou"} | {f"fix{r + 1}_iou" for r in range(rounds)}
        assert names <= set(m) and np.isfinite(float(loss))
    with pytest.raises(ValueError, match="trainable"):
        training.TrainConfig(trainable=("decoder",))


def test_training_steps_fit_a_fixed_batch(tiny):
    """A few AdamW steps on one batch lower the loss and raise the box IoU."""
    import optax

    sam, params, batch = tiny
    config = training.TrainConfig(correction_rounds=1)
    opt = optax.adamw(1e-3, weight_decay=0.0)

    @jax.jit
    def step(p, s, key):
        (loss, m), g = jax.value_and_grad(training.loss_fn, has_aux=True)(
            p, batch, key, sam=sam, config=config
        )
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss, m

    state = opt.init(params)
    first = None
    for i in range(30):
        params, state, loss, m = step(params, state, jax.random.key(i))
        first = first if first is not None else (float(loss), float(m["box_iou"]))
    assert float(loss) < 0.5 * first[0]
    assert float(m["box_iou"]) > first[1] + 0.2
