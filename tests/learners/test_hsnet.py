"""HSNet (`jaxvrp.learners.hsnet`) against the PyTorch reference written from the official
code (`tests/learners/hsnet_reference.py`): the center-pivot 4D conv, the whole forward on
non-square inputs for 1 and 2 shots, the K-shot vote, the parameter counts, and a training
smoke test."""

import functools
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from conversion.hsnet import convert_hsnet_state_dict
from jaxvrp import backbones
from jaxvrp.learners import hsnet, registry
from tests.backbones import torch_reference as tref
from tests.conftest import rel_l2
from tests.learners import hsnet_reference as ref

TOL = 1e-5
ARCH = "resnet_test"  # torchvision ResNet layout, layers (1, 2, 2, 1), width 8
H, W = 96, 128  # non-square on purpose: the official decoder's square upsampling shows


def heat_maps(rs: np.random.RandomState, n: int, h: int = H, w: int = W) -> np.ndarray:
    """(n, h, w) float weights in [0, 1]: a max-normalised sum of two Gaussian blobs."""
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    out = []
    for _ in range(n):
        g = np.zeros((h, w), np.float32)
        for _ in range(2):
            cy, cx = rs.uniform(0.2, 0.8) * h, rs.uniform(0.2, 0.8) * w
            s = rs.uniform(0.08, 0.2) * min(h, w)
            g += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
        out.append(g / g.max())
    return np.stack(out)


def official_state_dict(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """As the official `train.py` saves it: the DataParallel model's state dict."""
    return {"module." + k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@functools.cache
def reference_model(arch: str = ARCH, seed: int = 0):
    """(torch HSNet with random weights and BN/GN statistics, converted jaxvrp params)."""
    config = hsnet.make_config(arch)
    torch.manual_seed(seed)
    if arch.startswith("vgg"):  # official VGG-16 constants: nbottlenecks [2, 2, 3, 3, 3, 1]
        backbone = tref.vgg16_plain(config.backbone, seed=seed)
        model = ref.HypercorrSqueezeNetwork(backbone, [2, 2, 3, 3, 3, 1], vgg=True)
    else:
        backbone = tref.resnet(config.backbone, seed=seed)
        model = ref.HypercorrSqueezeNetwork(backbone, list(config.backbone.layers))
    ref.randomize_learner_(model, seed).eval()
    params = convert_hsnet_state_dict(official_state_dict(model), config)
    return model, params, config


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, -3)))


def batch(b: int, k: int, seed: int) -> dict:
    rs = np.random.RandomState(seed)
    return {
        "query_image": rs.randn(b, H, W, 3).astype(np.float32),
        "support_images": rs.randn(b, k, H, W, 3).astype(np.float32),
        "support_annotations": heat_maps(rs, b * k).reshape(b, k, H, W),
    }


@pytest.mark.parametrize(
    "kernel,stride,shape",
    [
        (3, 1, (2, 3, 7, 9, 10, 13)),
        (3, 2, (2, 3, 7, 9, 10, 13)),
        (5, 4, (1, 4, 6, 11, 13, 9)),
        # support dims 1 x 1 (the mixing blocks, the squeezes' last layers): conv2 is its
        # kernel's centre tap (`hsnet.Conv2d`), conv1 still a full conv over the query dims
        (3, 1, (2, 6, 5, 7, 1, 1)),
        (5, 2, (1, 4, 6, 5, 1, 1)),
    ],
)
def test_center_pivot_conv4d_matches_reference(kernel, stride, shape):
    torch.manual_seed(kernel * 10 + stride)
    m = ref.CenterPivotConv4d(
        shape[1], 5, (kernel,) * 4, (1, 1, stride, stride), (kernel // 2,) * 4
    )
    x = np.random.RandomState(stride).randn(*shape).astype(np.float32)
    with torch.no_grad():
        expected = m(torch.from_numpy(x)).permute(0, 2, 3, 4, 5, 1).numpy()
    params = {
        name: {
            "kernel": getattr(m, name).weight.detach().numpy().transpose(2, 3, 1, 0),
            "bias": getattr(m, name).bias.detach().numpy(),
        }
        for name in ("conv1", "conv2")
    }
    out = hsnet.CenterPivotConv4d(5, kernel, stride).apply(
        {"params": params}, np.moveaxis(x, 1, -1)
    )
    # Support dims shrink to ceil(n / stride); query dims are kept.
    assert (
        out.shape
        == expected.shape
        == (shape[0], *shape[2:4], *(-(-n // stride) for n in shape[4:]), 5)
    )
    assert rel_l2(out, expected) <= TOL


def test_one_shot_forward_matches_reference():
    model, params, config = reference_model()
    b = batch(2, 1, seed=1)
    s, a = b["support_images"][:, 0], b["support_annotations"][:, 0]
    with torch.no_grad():
        expected = model(nchw(b["query_image"]), nchw(s), torch.from_numpy(a))
    expected = expected.permute(0, 2, 3, 1).numpy()
    frozen = {"backbone": params["backbone"]}

    out, fg = jax.jit(
        lambda p, f, b: (hsnet.logits(p, f, b, config=config), hsnet.apply(p, f, b, config=config))
    )(params["learner"], frozen, b)
    assert out.shape == (2, H, W, 2)
    err = rel_l2(out, expected)
    assert err <= TOL, err
    # The protocol's apply: foreground minus background, same sign as the official argmax.
    np.testing.assert_allclose(fg, out[..., 1] - out[..., 0], rtol=1e-5, atol=1e-5)
    assert 0.05 < float((expected.argmax(-1) == 1).mean()) < 0.95  # a non-trivial mask


def test_vgg_one_shot_forward_matches_reference():
    """VGG-16 without BN (a narrow copy): conv4_x / conv5_x before ReLU and pool5."""
    model, params, config = reference_model("vgg_test_nobn", seed=4)
    assert hsnet.group_channels(config.backbone) == (1, 3, 3)
    b = batch(1, 1, seed=5)
    s, a = b["support_images"][:, 0], b["support_annotations"][:, 0]
    with torch.no_grad():
        expected = model(nchw(b["query_image"]), nchw(s), torch.from_numpy(a))
    fn = jax.jit(partial(hsnet.correlation_logits, config=config))
    out = fn(params["learner"], params["backbone"], b["query_image"], s, a)
    err = rel_l2(out, expected.permute(0, 2, 3, 1).numpy())
    assert err <= TOL, err


def test_resnet50_layout_one_shot_matches_reference():
    """The real ResNet-50 layout (13 maps; groups of 3 / 6 / 4), small non-square input."""
    model, params, config = reference_model("resnet50", seed=6)
    assert hsnet.group_channels(config.backbone) == (3, 6, 4)
    rs = np.random.RandomState(6)
    q, s = rs.randn(2, 1, 64, 96, 3).astype(np.float32)
    a = heat_maps(rs, 1, 64, 96)
    with torch.no_grad():
        expected = model(nchw(q), nchw(s), torch.from_numpy(a)).permute(0, 2, 3, 1).numpy()
    fn = jax.jit(partial(hsnet.correlation_logits, config=config))
    err = rel_l2(fn(params["learner"], params["backbone"], q, s, a), expected)
    assert err <= TOL, err


def test_runlocal_config_builds_the_learner():
    import importlib.util  # noqa: PLC0415

    path = Path(__file__).resolve().parents[2] / "configs" / "hsnet.py"
    spec = importlib.util.spec_from_file_location("hsnet_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("runlocal")
    assert c.learner == "hsnet" and c.data.image_size == 64
    config = registry.get(c.learner).make_config(**c.model)
    assert config == hsnet.make_config("resnet_test")
    full = module.get_config("dataset=coco20i")
    assert (full.batch_size, full.optimizer.lr, full.data.image_size) == (40, 1e-3, 400)
    with pytest.raises(ValueError, match="only the SAM whose encoder is the backbone"):
        module.get_config("sam=vit_h")


def test_two_shot_logits_and_vote_match_reference():
    model, params, config = reference_model()
    b = batch(2, 2, seed=2)
    frozen = {"backbone": params["backbone"]}
    q = nchw(b["query_image"])
    out, fg = jax.jit(
        lambda p, f, b: (hsnet.logits(p, f, b, config=config), hsnet.apply(p, f, b, config=config))
    )(params["learner"], frozen, b)
    assert out.shape == (2, 2, H, W, 2)
    with torch.no_grad():
        for k in range(2):
            e = model(
                q, nchw(b["support_images"][:, k]), torch.from_numpy(b["support_annotations"][:, k])
            )
            assert rel_l2(out[:, k], e.permute(0, 2, 3, 1).numpy()) <= TOL
        expected = model.predict_mask_nshot(
            q, nchw(b["support_images"]), torch.from_numpy(b["support_annotations"])
        ).numpy()
    assert 0 < expected.mean() < 1
    np.testing.assert_array_equal(hsnet.vote(out), expected == 1)
    np.testing.assert_array_equal(np.asarray(fg), np.where(expected == 1, 1.0, -1.0))


def test_vote_rule():
    """Votes over max(max vote, 1): a pixel needs half the image's top vote; no votes: none."""
    two = np.zeros((2, 3, 1, 4, 2), np.float32)
    votes = np.array([[0, 1, 2, 3], [0, 0, 0, 0]])  # per pixel, out of 3 shots
    for b in range(2):
        for x in range(4):
            two[b, : votes[b, x], 0, x, 1] = 1.0
    np.testing.assert_array_equal(hsnet.vote(two)[:, 0], [[False, False, True, True], [False] * 4])


def test_square_upsample_fix_and_official_square_upsampling():
    config = hsnet.make_config(ARCH)
    fixed = hsnet.make_config(ARCH, square_upsample_fix=True)
    grids = ((3, 4), (6, 8), (12, 16))  # layer4, layer3, layer2 of a 96 x 128 input
    channels = hsnet.group_channels(config.backbone)
    corr = [jnp.zeros((1, *g, *g, c)) for g, c in zip(grids, channels, strict=True)]
    params = hsnet.param_shapes(config)

    def shape(c):
        return jax.eval_shape(
            lambda p, *x: hsnet.HPNLearner(c).apply({"params": p}, *x), params, *corr
        )

    official, each_side = shape(config), shape(fixed)
    assert official.shape == (1, 32, 32, 2)  # (2 W, 2 W) from the 12 x 16 layer2 grid
    assert each_side.shape == (1, 24, 32, 2)


@pytest.mark.parametrize(
    "arch,expected,inch",
    [
        ("resnet50", 2_573_794, [3, 6, 4]),
        ("resnet101", 2_587_394, [3, 23, 4]),
        ("vgg16", 2_570_018, [1, 3, 3]),
    ],
)
def test_parameter_count(arch, expected, inch):
    config = hsnet.make_config(arch)
    assert hsnet.group_channels(config.backbone) == tuple(inch)
    assert hsnet.num_params(hsnet.param_shapes(config)) == expected
    torch_count = sum(p.numel() for p in ref.HPNLearner(inch).parameters())
    assert torch_count == expected


def test_depth_option_rule():
    """num_4d_layers: first n (kernel, stride, channels) entries; 4 repeats the last."""
    c1, c2, c4 = (hsnet.make_config("resnet50", num_4d_layers=n) for n in (1, 2, 4))
    assert c1.block_layers("encoder_layer2") == ((5, 4, 16),)
    assert c2.block_layers("encoder_layer3") == ((5, 4, 16), (3, 2, 64))
    assert c4.block_layers("encoder_layer2") == ((5, 4, 16), (5, 4, 64), (3, 2, 128), (3, 2, 128))
    assert c1.block_layers("encoder_layer4to3") == ((3, 1, 16),)
    counts = [hsnet.num_params(hsnet.param_shapes(c)) for c in (c1, c2, c4)]
    assert counts == [148_834, 579_554, 4_050_914]
    p = hsnet.param_shapes(c1)
    assert p["decoder1_0"]["kernel"].shape == (3, 3, 16, 128)
    assert "encoder_layer4_3" not in p and "encoder_layer4_9" in hsnet.param_shapes(c4)


def test_config_and_registry():
    config = hsnet.make_config("resnet50")
    assert registry.get("hsnet") is hsnet.LEARNER
    assert registry.BUILTIN["hsnet"] == "jaxvrp.learners.hsnet"
    spec = hsnet.LEARNER.frozen(config)
    assert spec.sam is None and spec.keys == ("backbone",)
    assert spec.backbone == backbones.get_config("resnet50")
    assert hash(config) == hash(hsnet.make_config("resnet50"))
    with pytest.raises(ValueError, match="no SAM"):
        hsnet.make_config("resnet50", sam="vit_b")
    with pytest.raises(TypeError, match="unknown HSNet options"):
        hsnet.make_config("resnet50", head="heatmap")
    with pytest.raises(ValueError, match="num_4d_layers"):
        hsnet.make_config("resnet50", num_4d_layers=5)
    with pytest.raises(ValueError, match="deep stem"):
        hsnet.make_config("resnet50_deepstem")
    with pytest.raises(ValueError, match="without BN"):
        hsnet.make_config("vgg16_bn")


def test_train_smoke_and_ignored_pixels():
    config = hsnet.make_config(ARCH)
    params = hsnet.init(jax.random.key(0), config)
    frozen = {"backbone": backbones.init(jax.random.key(1), config.backbone)}
    rs = np.random.RandomState(3)
    size = 48
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - 22) ** 2 + (xx - 26) ** 2 < 12**2).astype(np.float32)
    b = {
        "query_image": rs.randn(2, size, size, 3).astype(np.float32),
        "support_images": rs.randn(2, 1, size, size, 3).astype(np.float32),
        "support_annotations": np.stack([disc, disc])[:, None],
        "query_mask": np.stack([disc, disc]),
        "query_ignore": np.zeros((2, size, size), bool),
    }
    b["query_ignore"][:, :8] = True
    opt = optax.adam(1e-3)  # official train.py: Adam, lr 1e-3

    @jax.jit
    def step(params, state):
        (loss, parts), grads = jax.value_and_grad(
            lambda p: hsnet.loss_fn(p, frozen, b, config=config), has_aux=True
        )(params)
        updates, state = opt.update(grads, state, params)
        two = hsnet.logits(params, frozen, b, config=config)
        return optax.apply_updates(params, updates), state, loss, parts, grads, two

    state = opt.init(params)
    losses = []
    for i in range(6):
        params, state, loss, parts, grads, two = step(params, state)
        if i == 0:
            leaves = jax.tree.leaves(grads)
            assert all(bool(jnp.isfinite(g).all()) for g in leaves)
            assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0
            assert parts["ce"] == loss
            # Ignored pixels leave the mean: the loss is the CE over the valid pixels.
            two = np.asarray(two, np.float64)
            logp = two - np.log(np.exp(two).sum(-1, keepdims=True))
            target = b["query_mask"].astype(int)[..., None]
            ce = -np.take_along_axis(logp, target, -1)[..., 0]
            np.testing.assert_allclose(loss, ce[:, 8:].mean(), rtol=1e-5)
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 1e-3, losses


def test_batch_sharded_over_8_devices_matches_one_device(devices):
    """The folded-batch 4D convs shard on the batch axis like any conv: same logits."""
    config = hsnet.make_config(ARCH)
    params = hsnet.init(jax.random.key(2), config)
    frozen = {"backbone": backbones.init(jax.random.key(3), config.backbone)}
    rs = np.random.RandomState(8)
    b = {
        "query_image": rs.randn(8, 48, 64, 3).astype(np.float32),
        "support_images": rs.randn(8, 1, 48, 64, 3).astype(np.float32),
        "support_annotations": heat_maps(rs, 8, 48, 64)[:, None],
    }
    fn = jax.jit(partial(hsnet.apply, config=config))
    one = fn(params, frozen, b)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    sharded_batch = jax.device_put(b, data)
    replicated = jax.device_put(
        (params, frozen), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    )
    out = fn(*replicated, sharded_batch)
    assert out.sharding.spec[0] == "data"
    np.testing.assert_allclose(np.asarray(out), np.asarray(one), rtol=1e-5, atol=1e-6)


def test_sam_encoder_backbone_matches_the_reference_on_its_pyramid():
    """Our adaptation (`hsnet.VIT_GROUPS`): the SAM encoder's stages, layer3 and layer4
    average-pooled 2x2 / 4x4, into the official correlation and HPN (reference modules) with
    the group widths (1, 1, 2); and the config / frozen spec of that backbone."""
    from conversion.hsnet import convert_learner_state_dict
    from jaxvrp import frozen as frozen_lib
    from jaxvrp.sam import config as sam_config
    from jaxvrp.sam import model as sam_model

    config = hsnet.make_config("sam_tiny_128", sam="tiny_128")
    assert config == hsnet.make_config("sam_tiny_128")
    assert hsnet.group_channels(config.backbone) == (1, 1, 2)
    spec = hsnet.LEARNER.frozen(config)
    assert spec.keys == ("sam", "backbone") and spec.backbone_is_sam_encoder
    with pytest.raises(ValueError, match="backbone='sam_vit_b'"):
        hsnet.make_config("sam_tiny_128", sam="vit_b")
    from configs import hsnet as hsnet_config

    c = hsnet_config.get_config("backbone=sam_tiny_128,sam=tiny_128,runlocal")
    assert hsnet.make_config(**c.model.to_dict()) == config
    assert hsnet_config.get_config("runlocal").model.sam is None
    with pytest.raises(ValueError, match="only the SAM whose encoder is the backbone"):
        hsnet_config.get_config("sam=vit_b")

    sam_params = sam_model.init(jax.random.key(7), sam_config.get_config("tiny_128"))
    torch.manual_seed(5)
    learner = ref.HPNLearner([1, 1, 2])
    ref.randomize_learner_(learner, 5).eval()
    sd = {"hpn_learner." + k: v.detach().numpy() for k, v in learner.state_dict().items()}
    params = convert_learner_state_dict(sd, config)
    bb = frozen_lib.sam_backbone_params(sam_params, spec)

    rs = np.random.RandomState(11)
    size = 96  # not the encoder's 128: the images are resized to it first
    b = {
        "query_image": rs.randn(2, size, size, 3).astype(np.float32),
        "support_images": rs.randn(2, 1, size, size, 3).astype(np.float32),
        "support_annotations": heat_maps(rs, 2, size, size)[:, None],
    }
    out = jax.jit(lambda p, f, b: hsnet.logits(p, f, b, config=config))(params, {"backbone": bb}, b)

    def pyramid(images):  # the stages (tested equal to SAM's blocks elsewhere), pooled in torch
        resized = torch.nn.functional.interpolate(
            nchw(images), (128, 128), mode="bilinear", align_corners=True
        )
        feats = backbones.apply(bb, np.moveaxis(resized.numpy(), 1, -1), config=config.backbone)
        t = {k: nchw(np.asarray(v)) for k, v in feats.items()}
        pool = torch.nn.functional.avg_pool2d
        return [t["layer1"], t["layer2"], pool(t["layer3"], 2), pool(t["layer4"], 4)]

    q = pyramid(b["query_image"])
    s = pyramid(b["support_images"][:, 0])
    m = torch.from_numpy(b["support_annotations"][:, 0])[:, None]
    s = [
        f * torch.nn.functional.interpolate(m, f.shape[2:], mode="bilinear", align_corners=True)
        for f in s
    ]
    with torch.no_grad():
        corr = ref.multilayer_correlation(q, s, torch.tensor([1, 2, 4]))
        logit = learner(corr)
        expected = torch.nn.functional.interpolate(
            logit, (size, size), mode="bilinear", align_corners=True
        )
    expected = expected.permute(0, 2, 3, 1).numpy()
    assert out.shape == (2, size, size, 2)
    err = rel_l2(out, expected)
    assert err <= TOL, err
    assert 0.05 < float((expected.argmax(-1) == 1).mean()) < 0.95  # a non-trivial mask


@pytest.mark.parametrize("arch", [ARCH, "sam_tiny_128"])
def test_precomputed_stages_give_the_same_logits_and_loss(arch):
    """`precomputable_stages` of each image as `jaxvrp.precompute` stores them
    (`vrp.stored_stages`, one image at a time) in the batch as `query_features/*` (B, ...)
    and `support_features/*` (B, K, ...): the same 2-shot logits and loss as the backbone
    pass in the step, and a batch with other stages' arrays is not read as them."""
    from jaxvrp import frozen as frozen_lib
    from jaxvrp.learners import vrp
    from jaxvrp.sam import config as sam_config
    from jaxvrp.sam import model as sam_model

    config = hsnet.make_config(arch)
    stages = hsnet.precomputable_stages(config)
    if arch == ARCH:  # every bottleneck of layer2-4: (1, 2, 2, 1) -> 2 + 2 + 1 maps
        assert stages["query"] == ("layer4_0", "layer3_0", "layer3_1", "layer2_0", "layer2_1")
        frozen = {"backbone": backbones.init(jax.random.key(3), config.backbone)}
    else:
        assert stages["query"] == ("layer4", "layer3", "layer1", "layer2")
        sam = sam_model.init(jax.random.key(4), sam_config.get_config("tiny_128"))
        frozen = {"backbone": frozen_lib.sam_backbone_params(sam, hsnet.LEARNER.frozen(config))}
    assert stages["support"] == stages["query"]
    assert hsnet.LEARNER.stage_keys(config) == tuple(
        f"{r}_features/{s}" for r in ("query", "support") for s in stages["query"]
    )
    params = hsnet.init(jax.random.key(5), config)
    b, k, size = 2, 2, 80  # not the SAM encoder's 128: resized to it before its pass
    rs = np.random.RandomState(21)
    plain = {
        "query_image": rs.randn(b, size, size, 3).astype(np.float32),
        "support_images": rs.randn(b, k, size, size, 3).astype(np.float32),
        "support_annotations": heat_maps(rs, b * k, size, size).reshape(b, k, size, size),
        "query_mask": (rs.rand(b, size, size) > 0.6).astype(np.float32),
    }

    def stored(images):  # (N, H, W, 3) -> {stage: (N, h, w, C)}, one image per call
        names = stages["query"]
        one = [
            vrp.stored_stages(frozen["backbone"], x[None], config.backbone, names) for x in images
        ]
        return {n: np.concatenate([np.asarray(o[n]) for o in one]) for n in names}

    q = stored(plain["query_image"])
    s = stored(plain["support_images"].reshape(b * k, size, size, 3))
    served = {
        **plain,
        **{f"query_features/{n}": v for n, v in q.items()},
        **{f"support_features/{n}": v.reshape(b, k, *v.shape[1:]) for n, v in s.items()},
    }
    run = jax.jit(
        lambda p, f, x: (
            hsnet.logits(p, f, x, config=config),
            hsnet.loss_fn(p, f, x, config=config)[0],
        )
    )
    want, want_loss = run(params, frozen, plain)
    got, got_loss = run(params, frozen, served)
    assert got.shape == (b, k, size, size, 2)
    assert rel_l2(got, want) <= 1e-5 and abs(float(got_loss - want_loss)) <= 1e-5 * abs(
        float(want_loss)
    )
    # the stored arrays are what the step reads: another image's stages change the output
    swapped = {**served, **{f"query_features/{n}": v[::-1] for n, v in q.items()}}
    assert rel_l2(run(params, frozen, swapped)[0], want) > 1e-2
    # one role served, the other computed in the step
    half = {kk: v for kk, v in served.items() if not kk.startswith("query_features/")}
    assert rel_l2(run(params, frozen, half)[0], want) <= 1e-5
