"""A PyTorch reference of the whole VRP-SAM forward (evaluation mode), module for module.

Written from reading the official code (syp2ysy/VRP-SAM): `model/VRP_encoder.py`
(`VRP_encoder.forward`, `mask_feature`, `get_pseudo_mask`, `predict_mask_nshot`),
`model/base/transformer_decoder.py` (`PositionEmbeddingSine`, `SelfAttentionLayer`,
`CrossAttentionLayer`, `transformer_decoder`) and `SAM2pred.py` (`SAM_pred`). The backbone is
VRP-SAM's deep-stem dilated ResNet, built by `tests.backbones.torch_reference.resnet` (the
official `model/base/resnet.py` uses torchvision's `_make_layer` after its deep stem) and
split into `layer0..layer4` as `VRP_encoder.__init__` does. SAM is the official
`segment-anything` model.

Module attribute names are the official ones, so `state_dict()` has the key layout of the
official `train.py` checkpoints (without DDP's `module.` prefix) and converts with
`conversion.vrp_sam`.

Sizes that the official code fixes (`fea_dim` 1536, `hidden_dim` 256, `num_layers` 1) are
constructor arguments here so the reference runs at test sizes. Where the official code
depends on pieces that are not in the repository, the choice is noted:
- SAM's prompt encoder: the official one is a modified `segment-anything` that takes
  `protos=`; the queries are appended to the (empty) sparse prompts as raw embeddings and the
  dense prompt is `no_mask_embed` (what `prompt_encoder(points=None, boxes=None, masks=None)`
  returns).
- SAM's mask decoder: the official `MaskDecoder.predict_masks` `repeat_interleave`s the image
  embedding over the prompt batch, which is only right for one image; the reference decodes
  image b with prompt set b, one image at a time.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """DETR's sine encoding, normalised, scale 2 pi (official `PositionEmbeddingSine`)."""

    def __init__(self, num_pos_feats: int, temperature: float = 10000.0):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = 2 * math.pi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> (B, 2 * num_pos_feats, H, W)."""
        b, _, h, w = x.shape
        not_mask = torch.ones((b, h, w), dtype=torch.float32)
        y = not_mask.cumsum(1)
        x_ = not_mask.cumsum(2)
        eps = 1e-6
        y = y / (y[:, -1:, :] + eps) * self.scale
        x_ = x_ / (x_[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32)
        dim_t = self.temperature ** (
            2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats
        )
        px, py = x_[..., None] / dim_t, y[..., None] / dim_t
        px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=4).flatten(3)
        py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((py, px), dim=3).permute(0, 3, 1, 2)


class SelfAttentionLayer(nn.Module):
    """Post-norm: norm(tgt + MHA(tgt, tgt, tgt)); dropout 0, no query positions."""

    def __init__(self, d_model: int, nhead: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=0.0)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        """tgt (L, B, C) sequence-first, as nn.MultiheadAttention's default."""
        return self.norm(tgt + self.self_attn(tgt, tgt, value=tgt)[0])


class CrossAttentionLayer(nn.Module):
    """Post-norm: norm(tgt + MHA(tgt, memory + pos, memory))."""

    def __init__(self, d_model: int, nhead: int):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=0.0)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        out = self.multihead_attn(query=tgt, key=memory + pos, value=memory)[0]
        return self.norm(tgt + out)


class TransformerDecoder(nn.Module):
    """Official `transformer_decoder` (no FFN layers are called in its forward)."""

    def __init__(self, num_queries: int, hidden_dim: int, nheads: int = 4, num_layers: int = 1):
        super().__init__()
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2)
        self.num_layers = num_layers
        make = lambda cls: nn.ModuleList(cls(hidden_dim, nheads) for _ in range(num_layers))
        self.transformer_self_attention_layers = make(SelfAttentionLayer)
        self.transformer_self_attention_layers_0 = make(SelfAttentionLayer)
        self.transformer_cross_attention_layers = make(CrossAttentionLayer)
        self.transformer_cross_attention_layers_0 = make(CrossAttentionLayer)
        self.supp_q_feat = nn.Embedding(num_queries, hidden_dim)

    def forward(self, x: torch.Tensor, x_s: torch.Tensor) -> torch.Tensor:
        """Target x and reference x_s (B, C, H, W) -> queries (B, num_queries, C)."""
        bs = x.shape[0]
        pos_x = self.pe_layer(x).flatten(2).permute(2, 0, 1)
        src_x = x.flatten(2).permute(2, 0, 1)
        pos_x_s = self.pe_layer(x_s).flatten(2).permute(2, 0, 1)
        src_x_s = x_s.flatten(2).permute(2, 0, 1)
        q_supp_out = self.supp_q_feat.weight.unsqueeze(1).repeat(1, bs, 1)
        for i in range(self.num_layers):
            # As officially, every layer starts again from the learned queries
            # (`q_supp_out`); only the last layer's output is returned.
            output = self.transformer_cross_attention_layers_0[i](q_supp_out, src_x_s, pos_x_s)
            output = self.transformer_self_attention_layers_0[i](output)
            output = self.transformer_cross_attention_layers[i](output, src_x, pos_x)
            output = self.transformer_self_attention_layers[i](output)
        return output.permute(1, 0, 2)


class VRPEncoder(nn.Module):
    """Official `VRP_encoder` (evaluation forward, condition 'mask': the reference
    annotation given is used as is)."""

    def __init__(self, resnet: nn.Module, fea_dim: int, hidden_dim: int, num_layers: int = 1):
        super().__init__()
        r = resnet
        self.layer0 = nn.Sequential(
            r.conv1, r.bn1, nn.ReLU(), r.conv2, r.bn2, nn.ReLU(), r.conv3, r.bn3, nn.ReLU(),
            r.maxpool,
        )  # fmt: skip
        self.layer1, self.layer2, self.layer3, self.layer4 = r.layer1, r.layer2, r.layer3, r.layer4
        self.downsample_query = nn.Sequential(
            nn.Conv2d(fea_dim, hidden_dim, 1, bias=False), nn.ReLU(), nn.Dropout2d(0.5)
        )
        self.merge_1 = nn.Sequential(
            nn.Conv2d(2 * hidden_dim + 1, hidden_dim, 1, bias=False), nn.ReLU()
        )
        self.transformer_decoder = TransformerDecoder(50, hidden_dim, 4, num_layers)

    def forward(self, query_img, support_img, support_mask_ori):
        """Images (B, 3, H, W), annotation (B, H, W) -> prompts (B, 50, hidden_dim)."""
        with torch.no_grad():
            q0 = self.layer0(query_img)
            q2 = self.layer2(self.layer1(q0))
            q3 = self.layer3(q2)
            q4 = self.layer4(q3)
            query_feat = torch.cat([q2, q3], 1)
            s2 = self.layer2(self.layer1(self.layer0(support_img)))
            s3 = self.layer3(s2)
            support_mask = F.interpolate(
                support_mask_ori.unsqueeze(1).float(), size=s3.shape[2:], mode="nearest"
            )
            s4 = self.layer4(s3 * support_mask)
            supp_feat = torch.cat([s2, s3], 1)
            pseudo_mask = self.get_pseudo_mask(s4, q4, support_mask)
        query_feat = self.downsample_query(query_feat)
        supp_feat = self.downsample_query(supp_feat)
        prototype = self.mask_feature(supp_feat, support_mask)
        supp_feat_bin = prototype.repeat(1, 1, query_feat.shape[2], query_feat.shape[3])
        supp_feat_1 = self.merge_1(torch.cat([supp_feat, supp_feat_bin, support_mask * 10], 1))
        query_feat_1 = self.merge_1(torch.cat([query_feat, supp_feat_bin, pseudo_mask * 10], 1))
        return self.transformer_decoder(query_feat_1, supp_feat_1)

    @staticmethod
    def mask_feature(features, mask):
        """Masked average pooling, area + 5e-4, via avg_pool2d as officially: (B, C, 1, 1)."""
        feat = features * mask
        h, w = feat.shape[-2:]
        area = F.avg_pool2d(mask, (h, w)) * h * w + 0.0005
        return F.avg_pool2d(feat, kernel_size=(h, w)) * h * w / area

    @staticmethod
    def get_pseudo_mask(supp4, query4, mask):
        """Max over reference positions of the cosine similarity (no min-max, official)."""
        size = supp4.shape[2]
        mask = F.interpolate(mask, size=(size, size), mode="bilinear", align_corners=True)
        s = supp4 * mask
        b, c, sp, _ = query4.shape
        q = query4.reshape(b, c, -1)
        q_norm = torch.norm(q, 2, 1, True)
        s = s.reshape(b, c, -1).permute(0, 2, 1)
        s_norm = torch.norm(s, 2, 2, True)
        sim = torch.bmm(s, q) / (torch.bmm(s_norm, q_norm) + 1e-7)
        return sim.max(1)[0].reshape(b, 1, sp, sp)


class SAMPred(nn.Module):
    """Official `SAM_pred` around an official `Sam` (embeddings computed, not cached)."""

    def __init__(self, sam: nn.Module):
        super().__init__()
        self.sam_model = sam.eval()

    def forward(self, query_img: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
        """query (B, 3, H, W) ImageNet-normalised, protos (B, N, C) -> logits (B, 1, H, W)."""
        h, w = query_img.shape[2:]
        s = self.sam_model.image_encoder.img_size
        with torch.no_grad():
            x = F.interpolate(query_img, (s, s), mode="bilinear", align_corners=True)
            feats = self.sam_model.image_encoder(x)
        pe = self.sam_model.prompt_encoder
        sparse, dense = pe(points=None, boxes=None, masks=None)
        sparse = torch.cat([sparse.expand(protos.shape[0], -1, -1), protos], dim=1)
        low = []
        for i in range(query_img.shape[0]):  # one image per call, see the module docstring
            masks, _ = self.sam_model.mask_decoder(
                image_embeddings=feats[i : i + 1],
                image_pe=pe.get_dense_pe(),
                sparse_prompt_embeddings=sparse[i : i + 1],
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            low.append(masks)
        return F.interpolate(torch.cat(low), size=(h, w), mode="bilinear", align_corners=True)


def predict_nshot(
    encoder: VRPEncoder,
    sam: SAMPred,
    query_img: torch.Tensor,
    support_imgs: torch.Tensor,
    support_masks: torch.Tensor,
) -> torch.Tensor:
    """Official `predict_mask_nshot` up to the logits: each shot's prompts, concatenated
    along the token axis, prompt SAM once. (B, 3, H, W), (B, K, 3, H, W), (B, K, H, W) ->
    logits (B, 1, H, W)."""
    protos = [
        encoder(query_img, support_imgs[:, k], support_masks[:, k])
        for k in range(support_imgs.shape[1])
    ]
    return sam(query_img, torch.cat(protos, dim=1))


def randomize_(module: nn.Module, seed: int) -> nn.Module:
    """Seeded random values for the learner's zero/one-initialised tensors (attention biases,
    LayerNorm affines), so none of them is the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.named_parameters():
            if name.endswith("bias") or "norm" in name:
                base = 1.0 if ("norm" in name and name.endswith("weight")) else 0.0
                t.copy_(base + 0.2 * torch.randn(t.shape, generator=g))
    return module
