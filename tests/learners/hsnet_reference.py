"""A PyTorch reference of HSNet written module for module from the official code
(`juhongm999/hsnet` at 6b1bc12b: `model/hsnet.py`, `model/learner.py`,
`model/base/{conv4d,correlation,feature}.py`), NCHW and channels-first 6-D tensors as there,
for the parity tests of `jaxvrp.learners.hsnet`. It takes any torchvision ResNet (or a VGG
without BN) as the backbone, so small random backbones can stand in for ResNet-50.
"""

from functools import reduce
from operator import add

import torch
import torch.nn.functional as F
from torch import nn


class CenterPivotConv4d(nn.Module):
    """conv4d.py: conv1 over the query dims at the pruned support positions, conv2 (strided)
    over the support dims, summed."""

    def __init__(self, inch, outch, kernel, stride, padding):
        super().__init__()
        self.conv1 = nn.Conv2d(inch, outch, kernel[:2], stride=stride[:2], padding=padding[:2])
        self.conv2 = nn.Conv2d(inch, outch, kernel[2:], stride=stride[2:], padding=padding[2:])
        self.stride = stride

    def prune(self, ct):
        b, c, ha, wa, hb, wb = ct.shape
        ih = torch.arange(0, hb, self.stride[2])
        iw = torch.arange(0, wb, self.stride[3])
        # Flat support index h * wb + w of every kept (h, w), row-major, as `prune`.
        idx = (iw.repeat(len(ih), 1) + ih.repeat(len(iw), 1).t() * wb).reshape(-1)
        flat = ct.reshape(b, c, ha, wa, -1).index_select(4, idx)
        return flat.reshape(b, c, ha, wa, len(ih), len(iw))

    def forward(self, x):
        out1 = self.prune(x) if self.stride[3] > 1 else x
        b, c, ha, wa, hb, wb = out1.shape
        out1 = out1.permute(0, 4, 5, 1, 2, 3).reshape(-1, c, ha, wa)
        out1 = self.conv1(out1)
        o, oha, owa = out1.shape[-3:]
        out1 = out1.reshape(b, hb, wb, o, oha, owa).permute(0, 3, 4, 5, 1, 2)

        b, c, ha, wa, hb, wb = x.shape
        out2 = x.permute(0, 2, 3, 1, 4, 5).reshape(-1, c, hb, wb)
        out2 = self.conv2(out2)
        o, ohb, owb = out2.shape[-3:]
        out2 = out2.reshape(b, ha, wa, o, ohb, owb).permute(0, 3, 1, 2, 4, 5)
        return out1 + out2


def building_block(inch, outchs, kernels, strides, groups=4):
    layers = []
    for i, (o, k, s) in enumerate(zip(outchs, kernels, strides, strict=True)):
        c = inch if i == 0 else outchs[i - 1]
        layers += [
            CenterPivotConv4d(c, o, (k,) * 4, (1, 1, s, s), (k // 2,) * 4),
            nn.GroupNorm(groups, o),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


class HPNLearner(nn.Module):
    """learner.py, the official 3-layer blocks."""

    def __init__(self, inch):
        super().__init__()
        c1, c2, c3 = 16, 64, 128
        self.encoder_layer4 = building_block(inch[0], [c1, c2, c3], [3, 3, 3], [2, 2, 2])
        self.encoder_layer3 = building_block(inch[1], [c1, c2, c3], [5, 3, 3], [4, 2, 2])
        self.encoder_layer2 = building_block(inch[2], [c1, c2, c3], [5, 5, 3], [4, 4, 2])
        self.encoder_layer4to3 = building_block(c3, [c3] * 3, [3] * 3, [1] * 3)
        self.encoder_layer3to2 = building_block(c3, [c3] * 3, [3] * 3, [1] * 3)
        self.decoder1 = nn.Sequential(
            nn.Conv2d(c3, c3, 3, padding=1), nn.ReLU(), nn.Conv2d(c3, c2, 3, padding=1), nn.ReLU()
        )
        self.decoder2 = nn.Sequential(
            nn.Conv2d(c2, c2, 3, padding=1), nn.ReLU(), nn.Conv2d(c2, 2, 3, padding=1)
        )

    @staticmethod
    def interpolate_support_dims(x, size):
        # Resizes the (ha, wa) query dims, whatever the name says.
        b, c, ha, wa, hb, wb = x.shape
        x = x.permute(0, 4, 5, 1, 2, 3).reshape(b * hb * wb, c, ha, wa)
        x = F.interpolate(x, size, mode="bilinear", align_corners=True)
        return x.reshape(b, hb, wb, c, *size).permute(0, 3, 4, 5, 1, 2)

    def forward(self, pyramid):
        sqz4 = self.encoder_layer4(pyramid[0])
        sqz3 = self.encoder_layer3(pyramid[1])
        sqz2 = self.encoder_layer2(pyramid[2])
        mix43 = self.interpolate_support_dims(sqz4, sqz3.shape[-4:-2]) + sqz3
        mix43 = self.encoder_layer4to3(mix43)
        mix432 = self.interpolate_support_dims(mix43, sqz2.shape[-4:-2]) + sqz2
        mix432 = self.encoder_layer3to2(mix432)
        b, c, ha, wa = mix432.shape[:4]
        encoded = mix432.reshape(b, c, ha, wa, -1).mean(dim=-1)
        x = self.decoder1(encoded)
        w = x.shape[-1]
        x = F.interpolate(x, (2 * w, 2 * w), mode="bilinear", align_corners=True)
        return self.decoder2(x)


def extract_feat_res(img, backbone, feat_ids, bottleneck_ids, lids):
    """feature.py: each bottleneck's residual sum before its final ReLU."""
    feats = []
    feat = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(img))))
    for hid, (bid, lid) in enumerate(zip(bottleneck_ids, lids, strict=True)):
        block = getattr(backbone, f"layer{lid}")[bid]
        res = feat
        feat = block.relu(block.bn1(block.conv1(feat)))
        feat = block.relu(block.bn2(block.conv2(feat)))
        feat = block.bn3(block.conv3(feat))
        if bid == 0:
            res = block.downsample(res)
        feat = feat + res
        if hid + 1 in feat_ids:
            feats.append(feat.clone())
        feat = block.relu(feat)
    return feats


def extract_feat_vgg(img, backbone, feat_ids, bottleneck_ids=None, lids=None):
    feats, feat = [], img
    for i, module in enumerate(backbone.features):
        feat = module(feat)
        if i in feat_ids:
            feats.append(feat.clone())
    return feats


def multilayer_correlation(query_feats, support_feats, stack_ids):
    """correlation.py: cosine (norm + 1e-5) clamped at 0, stacked per group."""
    eps = 1e-5
    corrs = []
    for q, s in zip(query_feats, support_feats, strict=True):
        b, c, hb, wb = s.shape
        s = s.reshape(b, c, -1)
        s = s / (s.norm(dim=1, p=2, keepdim=True) + eps)
        b, c, ha, wa = q.shape
        q = q.reshape(b, c, -1)
        q = q / (q.norm(dim=1, p=2, keepdim=True) + eps)
        corr = torch.bmm(q.transpose(1, 2), s).reshape(b, ha, wa, hb, wb).clamp(min=0)
        corrs.append(corr)
    s0, s1, s2 = (int(v) for v in stack_ids)
    l4 = torch.stack(corrs[-s0:]).transpose(0, 1).contiguous()
    l3 = torch.stack(corrs[-s1:-s0]).transpose(0, 1).contiguous()
    l2 = torch.stack(corrs[-s2:-s1]).transpose(0, 1).contiguous()
    return [l4, l3, l2]


class HypercorrSqueezeNetwork(nn.Module):
    """hsnet.py on a given backbone. `nbottlenecks` and `feat_ids` follow the official
    per-backbone constants: ResNet [n1, n2, n3, n4] with feat_ids range(n1 + 1, sum + 1)
    (ResNet-50: range(4, 17)); VGG [2, 2, 3, 3, 3, 1] with features [17, 19, ..., 30]."""

    def __init__(self, backbone, nbottlenecks, vgg=False):
        super().__init__()
        self.backbone = backbone
        self.vgg = vgg
        if vgg:
            self.feat_ids = [17, 19, 21, 24, 26, 28, 30]
            self.extract_feats = extract_feat_vgg
        else:
            self.feat_ids = list(range(nbottlenecks[0] + 1, sum(nbottlenecks) + 1))
            self.extract_feats = extract_feat_res
        self.bottleneck_ids = reduce(add, [list(range(n)) for n in nbottlenecks])
        self.lids = reduce(add, [[i + 1] * n for i, n in enumerate(nbottlenecks)])
        self.stack_ids = torch.tensor(self.lids).bincount().flip(0).cumsum(dim=0)[:3]
        self.backbone.eval()
        self.hpn_learner = HPNLearner(list(reversed(nbottlenecks[-3:])))

    def mask_feature(self, features, mask):
        out = []
        for f in features:
            m = mask.unsqueeze(1).float()
            m = F.interpolate(m, f.shape[2:], mode="bilinear", align_corners=True)
            out.append(f * m)
        return out

    def forward(self, query_img, support_img, support_mask):
        with torch.no_grad():
            args = (self.backbone, self.feat_ids, self.bottleneck_ids, self.lids)
            q = self.extract_feats(query_img, *args)
            s = self.extract_feats(support_img, *args)
            s = self.mask_feature(s, support_mask.clone())
            corr = multilayer_correlation(q, s, self.stack_ids)
        logit = self.hpn_learner(corr)
        return F.interpolate(logit, support_img.shape[2:], mode="bilinear", align_corners=True)

    def predict_mask_nshot(self, query_img, support_imgs, support_masks):
        """hsnet.py: argmax per shot, summed; over max(max vote, 1) per image, >= 0.5."""
        nshot = support_imgs.shape[1]
        agg = 0
        for k in range(nshot):
            agg = agg + self(query_img, support_imgs[:, k], support_masks[:, k]).argmax(dim=1)
            if nshot == 1:
                return agg
        b = agg.shape[0]
        top = agg.reshape(b, -1).max(dim=1)[0]
        top = torch.stack([top, torch.ones_like(top)]).max(dim=0)[0].reshape(b, 1, 1)
        pred = agg.float() / top
        return (pred >= 0.5).float()


def randomize_learner_(model: nn.Module, seed: int) -> nn.Module:
    """Seeded non-trivial GroupNorm affines and conv biases (weights keep torch's init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("backbone."):
                continue
            if p.ndim == 1:
                is_gn_weight = name.endswith("weight")
                noise = torch.randn(p.shape, generator=g)
                p.copy_(1.0 + 0.2 * noise if is_gn_weight else 0.1 * noise)
    return model
