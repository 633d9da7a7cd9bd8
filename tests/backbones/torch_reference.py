"""torchvision reference models (random weights) for the backbone parity tests."""

import numpy as np
import pytest
import torch
from torch import nn

# Skip only when torchvision is truly absent; a torchvision that fails to load is an error.
tv_resnet = pytest.importorskip(
    "torchvision.models.resnet",
    reason="torchvision is not installed (`pip install -e .[test]` installs it)",
    exc_type=ModuleNotFoundError,
)
tv_vgg = pytest.importorskip("torchvision.models.vgg", exc_type=ModuleNotFoundError)


def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Seeded random values for every BN statistic and affine, so BN is not the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            noise = torch.randn(t.shape, generator=g)
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith(("running_mean", "bias")):
                t.copy_(0.1 * noise)
            elif t.ndim == 1:  # BN weight
                t.copy_(1.0 + 0.1 * noise)
            else:
                t.copy_(noise * t.std())
    return model.eval()


def resnet(config, seed: int = 0) -> nn.Module:
    """torchvision's ResNet for a jaxvrp `ResNetConfig`.

    Standard widths use torchvision's constructor as is. Other widths and the deep stem are
    built with torchvision's own `_make_layer` after setting the stem, as VRP-SAM's
    `resnet.py` does (three 3x3 convs 3->64->64->128, then `inplanes = 128`).
    """
    dilation = list(config.replace_stride_with_dilation)
    m = tv_resnet.ResNet(
        tv_resnet.Bottleneck, list(config.layers), replace_stride_with_dilation=dilation
    )
    if config.deep_stem or config.width != 64:
        w = config.width
        if config.deep_stem:
            m.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
            m.bn1 = nn.BatchNorm2d(64)
            m.conv2 = nn.Conv2d(64, 64, 3, 1, 1, bias=False)
            m.bn2 = nn.BatchNorm2d(64)
            m.conv3 = nn.Conv2d(64, 128, 3, 1, 1, bias=False)
            m.bn3 = nn.BatchNorm2d(128)
            m.inplanes = 128
        else:
            m.conv1 = nn.Conv2d(3, w, 7, 2, 3, bias=False)
            m.bn1 = nn.BatchNorm2d(w)
            m.inplanes = w
        m.dilation = 1
        m.layer1 = m._make_layer(tv_resnet.Bottleneck, w, config.layers[0])
        for i in (1, 2, 3):
            layer = m._make_layer(
                tv_resnet.Bottleneck, w * 2**i, config.layers[i], stride=2, dilate=dilation[i - 1]
            )
            setattr(m, f"layer{i + 1}", layer)
        m.fc = nn.Linear(8 * 4 * w, 10)
    return randomize_(m, seed)


def resnet_features(m: nn.Module, config, x: np.ndarray) -> dict[str, np.ndarray]:
    """layer0..4 and each layer2-4 bottleneck's pre-ReLU sum, captured from torchvision's
    own Bottleneck.forward (the input of its third ReLU call)."""
    captured: dict[str, list] = {}
    hooks = []
    for li in (2, 3, 4):
        for bi, block in enumerate(getattr(m, f"layer{li}")):
            calls = captured.setdefault(f"layer{li}_{bi}", [])
            hooks.append(
                block.relu.register_forward_pre_hook(
                    lambda mod, args, calls=calls: calls.append(args[0].clone())
                )
            )
    feats = {}
    with torch.no_grad():
        t = torch.from_numpy(x).permute(0, 3, 1, 2)
        if config.deep_stem:
            for i in (1, 2, 3):
                t = torch.relu(getattr(m, f"bn{i}")(getattr(m, f"conv{i}")(t)))
        else:
            t = m.relu(m.bn1(m.conv1(t)))
        t = m.maxpool(t)
        feats["layer0"] = t
        for li in (1, 2, 3, 4):
            t = getattr(m, f"layer{li}")(t)
            feats[f"layer{li}"] = t
    for h in hooks:
        h.remove()
    for k, calls in captured.items():
        assert len(calls) == 3, k
        feats[k] = calls[2]
    return {k: v.permute(0, 2, 3, 1).numpy() for k, v in feats.items()}


def vgg16_bn(config, seed: int = 0) -> nn.Module:
    """torchvision's VGG with BN for a jaxvrp `VGGConfig` (its max-pools set to ceil_mode)."""
    layers = tv_vgg.make_layers(list(config.cfg), batch_norm=True)
    m = tv_vgg.VGG(layers, num_classes=10, init_weights=True)
    for mod in m.features:
        if isinstance(mod, nn.MaxPool2d):
            mod.ceil_mode = config.ceil_mode
    return randomize_(m, seed)


def vgg_features(m: nn.Module, x: np.ndarray) -> dict[str, np.ndarray]:
    """VRP-SAM's stages: features[0:7], [7:14], [14:24], [24:34], [34:43]."""
    feats = {}
    with torch.no_grad():
        t = torch.from_numpy(x).permute(0, 3, 1, 2)
        for name, (a, b) in {
            "layer0": (0, 7),
            "layer1": (7, 14),
            "layer2": (14, 24),
            "layer3": (24, 34),
            "layer4": (34, 43),
        }.items():
            t = m.features[a:b](t)
            feats[name] = t.permute(0, 2, 3, 1).numpy()
    return feats


def vgg16_plain(config, seed: int = 0) -> nn.Module:
    """torchvision's VGG without BN (`vgg16`) for a jaxvrp `VGGConfig`, with its final
    max-pool (torchvision's cfg "D" ends with one)."""
    cfg = list(config.cfg) + (["M"] if config.final_pool else [])
    layers = tv_vgg.make_layers(cfg, batch_norm=False)
    m = tv_vgg.VGG(layers, num_classes=10, init_weights=True)
    return randomize_(m, seed)


def vgg_plain_features(m: nn.Module, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every conv's output before its (in-place) ReLU as `conv{block}_{i}` and every pool's
    output as `pool{block}`, read off torchvision's `features` one module at a time."""
    feats, block, conv = {}, 1, 0
    with torch.no_grad():
        t = torch.from_numpy(x).permute(0, 3, 1, 2)
        for mod in m.features:
            t = mod(t)
            if isinstance(mod, nn.Conv2d):
                conv += 1
                feats[f"conv{block}_{conv}"] = t.clone()
            elif isinstance(mod, nn.MaxPool2d):
                feats[f"pool{block}"] = t.clone()
                block, conv = block + 1, 0
    return {k: v.permute(0, 2, 3, 1).numpy() for k, v in feats.items()}
