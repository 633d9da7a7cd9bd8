"""ResNet / deep-stem ResNet / VGG-16-BN parity with torchvision, and their converter."""

import hashlib
from functools import partial

import jax
import numpy as np
import pytest
import torch

from conversion import backbone as backbone_conversion
from conversion.backbone import convert_backbone_state_dict
from conversion.common import ConversionError
from jaxvrp import backbones, params_io
from tests.backbones import torch_reference as ref
from tests.conftest import rel_l2

TOL = 1e-5


def _state_dict(m):
    return {k: v.numpy() for k, v in m.state_dict().items()}


def _check(feats, expected):
    assert set(expected) <= set(feats), sorted(set(expected) - set(feats))
    for k, v in expected.items():
        assert feats[k].shape == v.shape, k
        assert rel_l2(feats[k], v) <= TOL, (k, rel_l2(feats[k], v))


@pytest.mark.parametrize(
    "arch,hw",
    [
        ("resnet50", (64, 64)),
        ("resnet101", (32, 32)),
        ("resnet50_deepstem", (64, 64)),
        ("resnet_test", (70, 90)),
        ("resnet_test_deepstem", (70, 90)),
    ],
)
def test_resnet_matches_torchvision(arch, hw):
    config = backbones.get_config(arch)
    m = ref.resnet(config, seed=1)
    params = convert_backbone_state_dict(_state_dict(m), config)
    x = np.random.RandomState(0).randn(2, *hw, 3).astype(np.float32)
    feats = jax.jit(partial(backbones.apply, config=config))(params, x)
    expected = ref.resnet_features(m, config, x)
    n_bottlenecks = sum(config.layers[1:])
    assert len([k for k in expected if "_" in k]) == n_bottlenecks
    _check(feats, expected)
    if config.deep_stem:  # output stride 8, layer4 at 2048 * width/64 channels
        assert feats["layer4"].shape[1:3] == feats["layer2"].shape[1:3]


@pytest.mark.parametrize(
    "arch,hw,ceil_mode",
    [("vgg16_bn", (64, 64), True), ("vgg_test", (70, 90), True), ("vgg_test", (70, 90), False)],
)
def test_vgg_matches_torchvision(arch, hw, ceil_mode):
    config = backbones.get_config(arch, ceil_mode=ceil_mode)
    m = ref.vgg16_bn(config, seed=2)
    params = convert_backbone_state_dict(_state_dict(m), config)
    x = np.random.RandomState(1).randn(1, *hw, 3).astype(np.float32)
    feats = jax.jit(partial(backbones.apply, config=config))(params, x)
    _check(feats, ref.vgg_features(m, x))


@pytest.mark.parametrize("arch,hw", [("vgg16", (64, 48)), ("vgg_test_nobn", (70, 90))])
def test_vgg_without_bn_matches_torchvision(arch, hw):
    """torchvision's `vgg16` (HSNet's VGG): pre-ReLU conv outputs and every pool, pool5 too."""
    config = backbones.get_config(arch)
    m = ref.vgg16_plain(config, seed=3)
    params = convert_backbone_state_dict(_state_dict(m), config)
    x = np.random.RandomState(2).randn(1, *hw, 3).astype(np.float32)
    feats = jax.jit(partial(backbones.apply, config=config))(params, x)
    expected = ref.vgg_plain_features(m, x)
    assert len(expected) == 13 + 5 and "pool5" in expected and "conv5_3" in expected
    _check(feats, expected)
    np.testing.assert_array_equal(feats["layer4"], np.maximum(feats["conv5_3"], 0))


@pytest.mark.parametrize(
    "arch", ["resnet_test_deepstem", "resnet_test", "vgg_test", "vgg_test_nobn", "dinov2_test"]
)
def test_stages_can_run_separately(arch):
    """layer4 from a given layer3 (VRP-SAM runs it on the masked reference layer3)."""
    config = backbones.get_config(arch)
    params = backbones.init(jax.random.key(0), config)
    x = np.random.RandomState(0).randn(1, 56, 42, 3).astype(np.float32)
    # jitted (one compile per program) rather than eager: eager dispatch compiles every op
    apply = jax.jit(backbones.apply, static_argnames=("config", "start", "stop"))
    full = apply(params, x, config=config)
    head = apply(params, x, config=config, stop="layer3")
    assert "layer4" not in head
    np.testing.assert_array_equal(head["layer3"], full["layer3"])
    tail = apply(
        params, full["layer3"], config=config, start="layer4", prefix=head.get("layer3_prefix")
    )
    assert "layer3" not in tail and "layer0" not in tail
    np.testing.assert_allclose(tail["layer4"], full["layer4"], rtol=1e-5, atol=1e-5)


def test_converter_cli_round_trip_and_metadata(tmp_path):
    config = backbones.get_config("resnet_test_deepstem")
    m = ref.resnet(config, seed=3)
    src = tmp_path / "resnet_v2.pth"
    torch.save(m.state_dict(), src)
    out = tmp_path / "ckpt"
    code = backbone_conversion.main(
        ["--arch", "resnet_test_deepstem", "--checkpoint", str(src), "--out", str(out)]
    )
    assert code == 0
    params, loaded_config = backbones.load(out)
    assert loaded_config == config
    meta = params_io.load_metadata(out)
    assert meta["arch"] == "resnet_test_deepstem" and meta["source_file"] == "resnet_v2.pth"
    assert meta["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    x = np.random.RandomState(4).randn(1, 48, 48, 3).astype(np.float32)
    expected = ref.resnet_features(m, config, x)
    _check(backbones.apply(params, x, config=config), expected)


def test_converter_refuses_mismatches(tmp_path, capsys):
    config = backbones.get_config("resnet_test")
    sd = _state_dict(ref.resnet(config, seed=5))
    bad = dict(sd)
    del bad["layer2.0.bn1.running_var"]
    bad["layer2.0.extra.weight"] = np.zeros(3, np.float32)
    bad["layer1.0.conv1.weight"] = np.zeros((8, 3, 1, 1), np.float32)
    with pytest.raises(ConversionError) as e:
        convert_backbone_state_dict(bad, config)
    msg = str(e.value)
    assert "missing keys (1)" in msg and "layer2.0.bn1.running_var" in msg
    assert "unexpected keys (1)" in msg and "layer2.0.extra.weight" in msg
    assert "shape mismatches (1)" in msg and "layer1.0.conv1.weight" in msg
    # a deep-stem file given as a torchvision ResNet gets a hint
    deep = _state_dict(ref.resnet(backbones.get_config("resnet_test_deepstem"), seed=6))
    with pytest.raises(ConversionError, match="try --arch resnet50_deepstem"):
        convert_backbone_state_dict(deep, config)
    # the CLI leaves nothing behind
    src = tmp_path / "bad.pth"
    torch.save({k: torch.from_numpy(v) for k, v in bad.items()}, src)
    out = tmp_path / "out"
    assert (
        backbone_conversion.main(
            ["--arch", "resnet_test", "--checkpoint", str(src), "--out", str(out)]
        )
        == 2
    )
    assert "missing keys" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".out.partial*"))


@pytest.mark.parametrize(
    "arch",
    ["resnet50", "resnet101", "resnet50_deepstem", "resnet101_deepstem", "vgg16_bn", "vgg16"],
)
def test_full_size_key_maps(arch):
    """Every key of the full-size torchvision model maps onto our parameters (classifier and
    num_batches_tracked dropped), checked on the meta device without allocating weights."""
    from flax import traverse_util

    from conversion.common import torch_key

    config = backbones.get_config(arch)
    with torch.device("meta"):
        if arch.startswith("resnet"):
            m = ref.resnet(config)
        else:
            m = ref.vgg16_bn(config) if config.batch_norm else ref.vgg16_plain(config)
    official = {
        k: tuple(v.shape)
        for k, v in m.state_dict().items()
        if not backbone_conversion._DROPPED.search(k)
    }
    ours = traverse_util.flatten_dict(backbones.param_shapes(config))
    assert sorted(torch_key(p) for p in ours) == sorted(official)
