"""`python -m conversion.hsnet` on state dicts in the official layout (`train.py` saves the
DataParallel model: `module.hpn_learner.*` and `module.backbone.*`)."""

import numpy as np
import pytest
import torch
from flax import traverse_util

from conversion import hsnet as hsnet_conversion
from conversion.common import ConversionError
from jaxvrp import params_io
from jaxvrp.learners import hsnet
from tests.backbones import torch_reference as tref
from tests.learners import hsnet_reference as ref
from tests.learners.test_hsnet import ARCH, official_state_dict, reference_model


def _save(sd: dict[str, np.ndarray], path) -> str:
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, path)
    return str(path)


def _flat(tree) -> dict:
    return traverse_util.flatten_dict(tree)


def test_cli_round_trip_and_metadata(tmp_path):
    model, params, config = reference_model()
    sd = official_state_dict(model)
    assert any(k.startswith("module.backbone.fc.") for k in sd)  # dropped by name
    src = _save(sd, tmp_path / "best_model.pt")
    out = tmp_path / "hsnet"
    assert hsnet_conversion.main(["--checkpoint", src, "--out", str(out)]) == 0
    loaded, meta = params_io.load_params(out, expected_kind="hsnet")
    assert meta["config"] == {
        "backbone": ARCH,
        "sam": None,
        "num_4d_layers": 3,
        "square_upsample_fix": False,
    }
    assert meta["image_size"] == 400 and meta["module"] == "jaxvrp.learners.hsnet"
    assert meta["source_file"] == "best_model.pt" and len(meta["source_sha256"]) == 64
    rebuilt = hsnet.make_config(**meta["config"])
    assert rebuilt == config
    # The params whose forward equals the reference (test_hsnet) come back bit for bit.
    for part in ("learner", "backbone"):
        a, b = _flat(loaded[part]), _flat(params[part])
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    # A spot check of the layout transform: decoder2.2 is OIHW in the file, HWIO here.
    w = sd["module.hpn_learner.decoder2.2.weight"]
    np.testing.assert_array_equal(
        loaded["learner"]["decoder2_2"]["kernel"], w.transpose(2, 3, 1, 0)
    )
    gn = sd["module.hpn_learner.encoder_layer2.4.weight"]
    np.testing.assert_array_equal(loaded["learner"]["encoder_layer2_4"]["scale"], gn)
    # Without DataParallel's prefix the same file converts too.
    bare = {k.removeprefix("module."): v for k, v in sd.items()}
    again = hsnet_conversion.convert_hsnet_state_dict(bare, config)
    np.testing.assert_array_equal(
        again["learner"]["encoder_layer4_0"]["conv2"]["kernel"],
        params["learner"]["encoder_layer4_0"]["conv2"]["kernel"],
    )


@pytest.mark.parametrize(
    "edit,expected",
    [
        ("missing", "module.hpn_learner.encoder_layer3.3.conv1.bias"),
        ("extra", "hpn_learner.encoder_layer9.0.conv1.weight"),
        ("shape", "hpn_learner.decoder1.0.weight"),
        ("backbone_missing", "layer3.1.bn2.running_var"),
        ("stray", "cross_entropy_loss.weight"),
    ],
)
def test_bad_checkpoints_exit_2_and_write_nothing(tmp_path, capsys, edit, expected):
    model, _, _ = reference_model()
    sd = official_state_dict(model)
    if edit == "missing":
        del sd["module.hpn_learner.encoder_layer3.3.conv1.bias"]
        expected = expected.removeprefix("module.")
    elif edit == "extra":
        sd["module." + expected] = np.zeros((1, 1, 3, 3), np.float32)
    elif edit == "shape":
        sd["module." + expected] = np.zeros((128, 127, 3, 3), np.float32)
    elif edit == "backbone_missing":
        del sd["module.backbone." + expected]
    else:
        sd["module." + expected] = np.zeros(2, np.float32)
    src = _save(sd, tmp_path / "bad.pt")
    out = tmp_path / "out"
    assert hsnet_conversion.main(["--checkpoint", src, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert not out.exists() and not list(tmp_path.glob(".out.partial*"))


def test_refuses_non_hsnet_files_and_unknown_backbone(tmp_path):
    src = _save({"module.layer0.0.weight": np.zeros((2, 3, 1, 1), np.float32)}, tmp_path / "x.pt")
    with pytest.raises(ConversionError, match="not an HSNet checkpoint"):
        hsnet_conversion.convert(src, tmp_path / "o")
    model, _, _ = reference_model()
    src = _save(official_state_dict(model), tmp_path / "y.pt")
    with pytest.raises(ConversionError, match="unknown --backbone"):
        hsnet_conversion.convert(src, tmp_path / "o", backbone="resnet51")
    with pytest.raises(ConversionError, match="deep stem"):
        hsnet_conversion.convert(src, tmp_path / "o", backbone="resnet50_deepstem")
    assert not (tmp_path / "o").exists()


def _meta_state_dict(arch: str) -> dict[str, np.ndarray]:
    """The official key layout of a full-size HSNet, shapes only (zero-stride arrays)."""
    config = hsnet.make_config(arch)
    with torch.device("meta"):  # the backbone's weights are never allocated
        vgg = arch == "vgg16"
        backbone = tref.vgg16_plain(config.backbone) if vgg else tref.resnet(config.backbone)
    nbottlenecks = [2, 2, 3, 3, 3, 1] if vgg else list(config.backbone.layers)
    model = ref.HypercorrSqueezeNetwork(backbone, nbottlenecks, vgg=vgg)
    return {
        "module." + k: np.broadcast_to(np.float32(0), tuple(v.shape))
        for k, v in model.state_dict().items()
    }


@pytest.mark.parametrize("arch", ["resnet50", "resnet101", "vgg16"])
def test_full_size_official_layouts_convert(arch):
    """Every key of the official ResNet-50/101 and VGG-16 HSNets maps onto our params."""
    sd = _meta_state_dict(arch)
    learner_sd, backbone_sd = hsnet_conversion.split_state_dict(sd)
    assert hsnet_conversion.infer_backbone(backbone_sd) == arch
    assert hsnet_conversion.infer_num_4d_layers(learner_sd) == 3
    config = hsnet.make_config(arch)
    if arch == "resnet101":  # the key map alone (skips 170 MB of transposes)
        shapes = _flat(hsnet.param_shapes(config))
        keys = {"hpn_learner." + hsnet_conversion.torch_key(p) for p in shapes}
        assert keys == set(learner_sd)
        return
    params = hsnet_conversion.convert_hsnet_state_dict(sd, config)
    assert hsnet.num_params(params["learner"]) == hsnet.num_params(hsnet.param_shapes(config))
