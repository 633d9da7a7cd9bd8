"""The official VRP-SAM checkpoint converter, on state dicts built with the official layout
(DDP `module.` prefix, packed `nn.MultiheadAttention`, VRP-SAM's `layer0..4` backbone)."""

import numpy as np
import pytest
import torch
from torch import nn

from conversion import vrp_sam
from conversion.common import ConversionError
from jaxvrp import backbones
from jaxvrp.learners import checkpoint, vrp
from jaxvrp.learners.attention import MultiheadAttention
from tests.backbones import torch_reference as ref
from tests.conftest import rel_l2

BACKBONE, SAM, HIDDEN = "resnet_test_deepstem", "test_small_image", 64
ATTN_LAYERS = {
    "transformer_cross_attention_layers_0.0": "multihead_attn",
    "transformer_self_attention_layers_0.0": "self_attn",
    "transformer_cross_attention_layers.0": "multihead_attn",
    "transformer_self_attention_layers.0": "self_attn",
}


def official_state_dict(seed=0):
    """(state dict as the official train.py saves it, the torch modules behind it)."""
    torch.manual_seed(seed)
    bb = ref.resnet(backbones.get_config(BACKBONE), seed=seed)
    stem = {"conv1": "0", "bn1": "1", "conv2": "3", "bn2": "4", "conv3": "6", "bn3": "7"}
    sd = {}
    for k, v in bb.state_dict().items():
        head, rest = k.split(".", 1)
        if head in stem:
            sd[f"layer0.{stem[head]}.{rest}"] = v
        elif head.startswith("layer"):
            sd[k] = v
    mods = {
        "downsample_query.0": nn.Conv2d(64 + 128, HIDDEN, 1, bias=False),
        "merge_1.0": nn.Conv2d(2 * HIDDEN + 1, HIDDEN, 1, bias=False),
        "transformer_decoder.supp_q_feat": nn.Embedding(50, HIDDEN),
    }
    for layer, attn in ATTN_LAYERS.items():
        mha = nn.MultiheadAttention(HIDDEN, 4)
        with torch.no_grad():
            mha.in_proj_bias.normal_()
        mods[f"transformer_decoder.{layer}.{attn}"] = mha
        mods[f"transformer_decoder.{layer}.norm"] = nn.LayerNorm(HIDDEN)
    for prefix, m in mods.items():
        sd.update({f"{prefix}.{k}": v for k, v in m.state_dict().items()})
    return {f"module.{k}": v.detach().clone() for k, v in sd.items()}, bb, mods


def _convert(tmp_path, sd, name="out"):
    src = tmp_path / "best_model.pt"
    torch.save(sd, src)
    out = tmp_path / name
    argv = ["--checkpoint", str(src), "--out", str(out), "--backbone", BACKBONE, "--sam", SAM]
    return vrp_sam.main(argv), out


def test_round_trip(tmp_path):
    sd, bb, mods = official_state_dict()
    code, out = _convert(tmp_path, sd)
    assert code == 0
    ckpt = checkpoint.load(out)
    learner, backbone_params, config = ckpt.params, ckpt.backbone_params, ckpt.config
    assert config.num_queries == 50 and config.hidden_dim == HIDDEN
    assert vrp.num_params(learner) == sum(p.numel() for m in mods.values() for p in m.parameters())
    # each attention layer computes what torch's packed nn.MultiheadAttention computes
    rs = np.random.RandomState(0)
    q, kv = rs.randn(2, 5, HIDDEN).astype(np.float32), rs.randn(2, 9, HIDDEN).astype(np.float32)
    for layer, attn in ATTN_LAYERS.items():
        ours = learner["transformer_decoder"][layer.replace(".", "_")][attn]
        got = MultiheadAttention(HIDDEN, 4).apply({"params": ours}, q, kv, kv)
        mha = mods[f"transformer_decoder.{layer}.{attn}"].eval()
        with torch.no_grad():
            want = mha(*(torch.from_numpy(x).transpose(0, 1) for x in (q, kv, kv)))[0]
        assert rel_l2(got, want.transpose(0, 1).numpy()) <= 1e-5, layer
    w = mods["downsample_query.0"].weight.detach().numpy()
    np.testing.assert_array_equal(learner["downsample_query_0"]["kernel"], w.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(
        learner["transformer_decoder"]["supp_q_feat"]["embedding"],
        mods["transformer_decoder.supp_q_feat"].weight.detach().numpy(),
    )
    # the backbone gives torchvision's features
    x = rs.randn(1, 48, 48, 3).astype(np.float32)
    feats = backbones.apply(backbone_params, x, config=config.backbone)
    for k, v in ref.resnet_features(bb, config.backbone, x).items():
        assert rel_l2(feats[k], v) <= 1e-5, k


def test_unprefixed_file_and_inferred_full_size_backbones():
    sd, _, _ = official_state_dict()
    plain = {k.removeprefix("module."): v.numpy() for k, v in sd.items()}
    config = vrp.make_config(BACKBONE, SAM)
    params = vrp_sam.convert_vrp_sam_state_dict(plain, config, BACKBONE)
    assert set(params) == {"learner", "backbone"}
    for arch in ("resnet50_deepstem", "resnet101_deepstem", "vgg16_bn"):
        cfg = backbones.get_config(arch)
        with torch.device("meta"):
            m = ref.resnet(cfg) if arch.startswith("resnet") else ref.vgg16_bn(cfg)
        keys = dict.fromkeys(m.state_dict())
        if arch.startswith("resnet"):
            stem = {"conv1": "0", "bn1": "1", "conv2": "3", "bn2": "4", "conv3": "6", "bn3": "7"}
            names = [
                f"layer0.{stem[k.split('.')[0]]}.{k.split('.', 1)[1]}"
                if k.split(".")[0] in stem
                else k
                for k in keys
                if not k.startswith("fc")
            ]
        else:
            bounds = [0, 7, 14, 24, 34, 43]
            names = []
            for k in keys:
                if k.startswith("features."):
                    i = int(k.split(".")[1])
                    s = max(j for j in range(5) if bounds[j] <= i)
                    names.append(f"layer{s}.{i - bounds[s]}.{k.split('.', 2)[2]}")
        assert vrp_sam.infer_backbone(dict.fromkeys(names)) == arch


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda sd: sd.pop("module.merge_1.0.weight"), "missing keys (1)"),
        (
            lambda sd: sd.update({"module.transformer_decoder.extra.weight": torch.zeros(2)}),
            "unexpected keys (1)",
        ),
        (
            lambda sd: sd.update({"module.classifier.weight": torch.zeros(2)}),
            "neither learner nor backbone",
        ),
        (
            lambda sd: sd.update({"module.merge_1.0.weight": torch.zeros(64, 3, 1, 1)}),
            "shape mismatches (1)",
        ),
        (lambda sd: sd.pop("module.layer2.0.bn1.running_mean"), "layer2.0.bn1.running_mean"),
    ],
)
def test_refuses_mismatches_and_writes_nothing(tmp_path, capsys, mutate, message):
    sd, _, _ = official_state_dict()
    mutate(sd)
    code, out = _convert(tmp_path, sd)
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".out.partial*"))


def test_unknown_backbone_layout_is_a_clear_error():
    with pytest.raises(ConversionError, match="pass --backbone"):
        vrp_sam.infer_backbone({"layer0.0.weight": None})
