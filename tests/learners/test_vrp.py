"""VRP-SAM learner: shapes, parameters, gradients, options, K-shot, training signal."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from jaxvrp import backbones
from jaxvrp.learners import vrp
from jaxvrp.learners.attention import MultiheadAttention, sine_position_embedding
from jaxvrp.learners.losses import segmentation_loss
from tests.conftest import rel_l2
from tests.learners.common import BACKBONE, SAM, frozen_params, make_batch


@pytest.fixture(scope="module")
def setup():
    config = vrp.make_config(BACKBONE, SAM)
    return config, vrp.init(jax.random.key(0), config), frozen_params()


def test_default_learner_has_the_official_parameter_count():
    config = vrp.make_config("resnet50_deepstem", "vit_h")
    shapes = jax.eval_shape(partial(vrp.init, config=config), jax.random.key(0))
    assert vrp.num_params(shapes) == 1_592_064  # VRP-SAM paper / official code
    vgg = vrp.make_config("vgg16_bn", "vit_h")
    shapes = jax.eval_shape(partial(vrp.init, config=vgg), jax.random.key(0))
    assert shapes["downsample_query_0"]["kernel"].shape == (1, 1, 768, 256)


@pytest.mark.parametrize("backbone", ["vgg_test", "dinov2_test", "resnet_test"])
def test_other_backbones(backbone):
    """VGG (layer2 resized to layer3), DINOv2 (64 -> 70 = 5 x 14 input, layer4 continued
    from the class token) and an undilated torchvision ResNet (pseudo-mask at layer4's
    coarser grid, resized to layer3's) run end to end."""
    config = vrp.make_config(backbone, SAM)
    # jitted: one compile each instead of op-by-op dispatch of the whole model
    params = jax.jit(lambda k: vrp.init(k, config))(jax.random.key(0))
    frozen = {
        "sam": frozen_params()["sam"],
        "backbone": jax.jit(lambda k: backbones.init(k, config.backbone))(jax.random.key(1)),
    }
    out = jax.jit(partial(vrp.apply, config=config))(params, frozen, make_batch(b=1, k=2))
    assert out.shape == (1, 64, 64) and bool(jnp.isfinite(out).all())


def test_config_errors():
    with pytest.raises(ValueError, match="hidden_dim 128 must equal the SAM prompt width 256"):
        vrp.make_config("resnet50_deepstem", "vit_b", hidden_dim=128)
    with pytest.raises(ValueError, match="annotation_downsample"):
        vrp.make_config(annotation_downsample="bicubic")


def test_shapes_jit_and_determinism(setup):
    config, params, frozen = setup
    batch = make_batch(b=2, k=1)
    fn = jax.jit(partial(vrp.apply, config=config, train=True))
    a = fn(params, frozen, batch, rng=jax.random.key(1))
    b = fn(params, frozen, batch, rng=jax.random.key(1))
    c = fn(params, frozen, batch, rng=jax.random.key(2))
    assert a.shape == (2, 64, 64) and a.dtype == jnp.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)  # dropout follows the rng
    evaluate = jax.jit(partial(vrp.apply, config=config))
    e1 = evaluate(params, frozen, batch)
    e2 = evaluate(params, frozen, batch, rng=jax.random.key(9))
    np.testing.assert_array_equal(e1, e2)  # no randomness at evaluation
    with pytest.raises(ValueError, match="needs an rng"):
        vrp.apply(params, frozen, batch, config=config, train=True)


def test_vmap_over_batches(setup):
    config, params, frozen = setup
    b1, b2 = make_batch(seed=1), make_batch(seed=2)
    stacked = jax.tree.map(lambda x, y: np.stack([x, y]), b1, b2)
    apply = jax.jit(lambda b: vrp.apply(params, frozen, b, config=config))
    out = jax.jit(jax.vmap(apply))(stacked)
    np.testing.assert_allclose(out[0], apply(b1), atol=1e-4)
    np.testing.assert_allclose(out[1], apply(b2), atol=1e-4)


def test_k_shot_concatenates_the_prompt_sets_of_each_shot(setup):
    config, params, frozen = setup
    batch = make_batch(b=2, k=3, seed=3)
    prompts = vrp.encode_prompts(params, frozen, batch, config=config, train=False, rng=None)
    assert prompts.shape == (2, 3 * config.num_queries, config.hidden_dim)
    for shot in range(3):
        one = {
            **batch,
            "support_images": batch["support_images"][:, shot : shot + 1],
            "support_annotations": batch["support_annotations"][:, shot : shot + 1],
        }
        p1 = vrp.encode_prompts(params, frozen, one, config=config, train=False, rng=None)
        sl = slice(shot * config.num_queries, (shot + 1) * config.num_queries)
        np.testing.assert_allclose(prompts[:, sl], p1, rtol=1e-5, atol=1e-5)
    assert vrp.apply(params, frozen, batch, config=config).shape == (2, 64, 64)
    # each query through the backbone once, not once per shot: the stem convolutions over
    # 3-channel images see the 2 queries and the 6 references, and nothing else
    from jaxvrp import stacked

    jaxpr = jax.make_jaxpr(lambda f, b: vrp.shot_features(f, b, config))(frozen, batch)
    assert sorted(s[0] for s in stacked._image_convs(jaxpr.jaxpr)) == [2, 6]


def test_gradients_reach_every_learner_param_and_no_frozen_param(setup):
    config, params, frozen = setup
    batch = make_batch(seed=4)
    loss = lambda p, f: vrp.loss_fn(p, f, batch, config=config, rng=jax.random.key(0))[0]
    # one pass for both: the learner's gradients and the frozen models'
    grads, frozen_grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, frozen)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
        assert float(jnp.abs(g).max()) > 0, jax.tree_util.keystr(path)
    # the frozen backbone and SAM image encoder sit behind stop_gradient: asking for their
    # gradients gives exact zeros, so nothing upstream of them is ever differentiated
    for tree in (frozen_grads["backbone"], frozen_grads["sam"]["image_encoder"]):
        assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(tree))


def test_annotation_downsampling_nearest_drops_points_any_keeps_them():
    ann = np.zeros((1, 64, 64), np.float32)
    ann[0, [3, 21, 40], [5, 30, 61]] = 1  # three single-pixel points
    nearest = vrp.downsample_annotation(jnp.asarray(ann), (8, 8), "nearest")
    anyhit = vrp.downsample_annotation(jnp.asarray(ann), (8, 8), "any")
    assert float(nearest.sum()) == 0  # nearest samples pixel 8i only
    assert float(anyhit.sum()) == 3 and anyhit.shape == (1, 8, 8, 1)
    assert anyhit[0, 0, 0, 0] == 1 and anyhit[0, 2, 3, 0] == 1 and anyhit[0, 5, 7, 0] == 1
    odd = vrp.downsample_annotation(jnp.asarray(ann), (7, 9), "any")  # uneven windows
    assert float(odd.sum()) == 3


def test_pseudo_mask_minmax_option():
    rs = np.random.RandomState(5)
    s4, q4 = rs.randn(2, 6, 6, 16), rs.randn(2, 6, 6, 16)
    mask = (rs.rand(2, 6, 6, 1) > 0.5).astype(np.float32)
    raw = vrp.pseudo_mask(s4, q4, mask, 1e-7, minmax=False)
    norm = vrp.pseudo_mask(s4, q4, mask, 1e-7, minmax=True)
    assert raw.shape == (2, 6, 6, 1) and float(raw.min()) > -1 and float(raw.max()) <= 1
    np.testing.assert_allclose(norm.min(axis=(1, 2, 3)), 0, atol=1e-6)
    np.testing.assert_allclose(norm.max(axis=(1, 2, 3)), 1, atol=1e-5)
    # a query position equal to an unmasked support position has similarity 1
    s4[0, 1, 1], mask[0, 1, 1] = q4[0, 4, 2], 1
    assert float(vrp.pseudo_mask(s4, q4, mask, 1e-7, minmax=False)[0, 4, 2, 0]) == pytest.approx(1)


def test_loss_ignores_ignored_pixels():
    rs = np.random.RandomState(6)
    logits = rs.randn(2, 16, 16).astype(np.float32)
    target = (rs.rand(2, 16, 16) > 0.5).astype(np.float32)
    ignore = rs.rand(2, 16, 16) > 0.7
    flipped = np.where(ignore, 1 - target, target)
    a, _ = segmentation_loss(logits, target, ignore)
    b, _ = segmentation_loss(logits, flipped, ignore)
    assert float(a) == pytest.approx(float(b), rel=1e-6)
    c, _ = segmentation_loss(logits, flipped)
    assert float(c) != pytest.approx(float(a), rel=1e-3)
    perfect, parts = segmentation_loss(np.where(target > 0, 20.0, -20.0), target)
    assert float(parts["bce"]) < 1e-6 and float(parts["dice"]) < 1e-3


def test_multihead_attention_matches_torch():
    """Our MultiheadAttention with torch's packed in_proj split into q/k/v."""
    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_bias.normal_()
        ref.out_proj.bias.normal_()
    w, bias = ref.in_proj_weight.detach().numpy(), ref.in_proj_bias.detach().numpy()
    params = {
        name: {"kernel": w[i * 32 : (i + 1) * 32].T, "bias": bias[i * 32 : (i + 1) * 32]}
        for i, name in enumerate(("q_proj", "k_proj", "v_proj"))
    }
    params["out_proj"] = {
        "kernel": ref.out_proj.weight.detach().numpy().T,
        "bias": ref.out_proj.bias.detach().numpy(),
    }
    rs = np.random.RandomState(0)
    q, k, v = (rs.randn(2, n, 32).astype(np.float32) for n in (5, 7, 7))
    ours = MultiheadAttention(32, 4).apply({"params": params}, q, k, v)
    with torch.no_grad():
        theirs = ref(*(torch.from_numpy(x) for x in (q, k, v)), need_weights=False)[0]
    assert rel_l2(ours, theirs.numpy()) <= 1e-5


def test_sine_position_embedding_matches_detr():
    detr = pytest.importorskip(
        "transformers.models.detr.modeling_detr", exc_type=ModuleNotFoundError
    )
    ref = detr.DetrSinePositionEmbedding(128, 10000, normalize=True, scale=2 * np.pi)
    expected = ref((1, 256, 9, 13), "cpu", torch.float32)[0].permute(1, 2, 0).numpy()
    assert rel_l2(sine_position_embedding(9, 13, 128), expected) <= 1e-6


def test_training_drives_the_loss_down_on_a_fixed_batch(setup):
    """A random SAM cannot draw arbitrary masks, so the target is one it can draw: its mask
    for a random 'teacher' prompt set. Training the learner must then cut the loss."""
    config, params, frozen = setup
    batch = make_batch(b=2, seed=7)
    batch["query_embedding"] = vrp.sam_embeddings(frozen["sam"], batch["query_image"], config)
    teacher = jax.random.normal(jax.random.key(11), (2, config.num_queries, config.hidden_dim))
    logits = vrp.decode_with_prompts(
        frozen["sam"], batch["query_embedding"], teacher, (64, 64), config
    )
    batch["query_mask"] = np.asarray(logits > 0, np.float32)
    opt = optax.adam(1e-2)

    @jax.jit
    def step(p, s, rng):
        (loss, _), g = jax.value_and_grad(
            partial(vrp.loss_fn, config=config, train=False), has_aux=True
        )(p, frozen, batch, rng=rng)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    p, s = params, opt.init(params)
    losses = []
    for i in range(30):
        p, s, loss = step(p, s, jax.random.key(i))
        losses.append(float(loss))
    assert losses[-1] < 0.85 * losses[0], losses
