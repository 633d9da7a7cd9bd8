"""PyTorch references for PerSAM / PerSAM-F, written from reading the official code
(ZrrSkywalker/Personalize-SAM at a7e87245: `persam.py`, `persam_f.py`,
`per_segment_anything/modeling/{transformer,mask_decoder}.py`, `predictor.py`).

The decoder is the PyPI `segment-anything` `MaskDecoder` / `TwoWayTransformer` with exactly
the two per_segment_anything changes: `attn_sim` in the token->image attention of each
two-way block, and `target_embedding` added with the official in-place `+=` (its aliasing
with `point_embedding` is kept literally, not rewritten). The pipelines follow the official
scripts line by line on one image at a time, with the batch mapping of
`jaxvrp.learners.persam` (images resized to SAM's square input with bilinear,
align_corners=True; the reference mask as the red channel of a PerSeg annotation, 128).
"""

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from conversion.official import build_official_sam, randomize_
from conversion.sam import convert_sam_state_dict
from jaxvrp.sam.config import get_config


@functools.cache
def official_and_params(variant: str, seed: int = 0):
    """(PyPI torch Sam, jaxvrp params, SamConfig) with the same random weights, seeded
    fully: `randomize_` rescales by the default initialisation's spread, which is drawn
    from torch's global generator, so that is seeded first."""
    config = get_config(variant)
    torch.manual_seed(seed)
    ref = randomize_(build_official_sam(config), seed)
    state_dict = {k: v.numpy() for k, v in ref.state_dict().items()}
    return ref, convert_sam_state_dict(state_dict, config), config


# ------------------------------------------------------------------ modified SAM decoder


def attention(attn_mod, q, k, v, attn_sim=None):
    """per_segment_anything `Attention.forward` on a PyPI `Attention`'s weights."""
    q, k, v = attn_mod.q_proj(q), attn_mod.k_proj(k), attn_mod.v_proj(v)
    q = attn_mod._separate_heads(q, attn_mod.num_heads)
    k = attn_mod._separate_heads(k, attn_mod.num_heads)
    v = attn_mod._separate_heads(v, attn_mod.num_heads)
    _, _, _, c_per_head = q.shape
    attn = q @ k.permute(0, 1, 3, 2)
    attn = attn / math.sqrt(c_per_head)
    attn = torch.softmax(attn, dim=-1)
    if attn_sim is not None:
        attn = attn + attn_sim
        attn = torch.softmax(attn, dim=-1)
    out = attn @ v
    return attn_mod.out_proj(attn_mod._recombine_heads(out))


def two_way_block(block, queries, keys, query_pe, key_pe, attn_sim):
    """per_segment_anything `TwoWayAttentionBlock.forward`: attn_sim only reaches the
    token->image cross-attention."""
    if block.skip_first_layer_pe:
        queries = attention(block.self_attn, queries, queries, queries)
    else:
        q = queries + query_pe
        queries = queries + attention(block.self_attn, q, q, queries)
    queries = block.norm1(queries)
    q, k = queries + query_pe, keys + key_pe
    queries = queries + attention(block.cross_attn_token_to_image, q, k, keys, attn_sim)
    queries = block.norm2(queries)
    queries = block.norm3(queries + block.mlp(queries))
    q, k = queries + query_pe, keys + key_pe
    keys = keys + attention(block.cross_attn_image_to_token, k, q, queries)
    keys = block.norm4(keys)
    return queries, keys


def two_way_transformer(
    tr, image_embedding, image_pe, point_embedding, attn_sim, target, inplace=True
):
    """per_segment_anything `TwoWayTransformer.forward`, in-place `+=` included.

    `inplace=False` is the same code without the aliasing (`queries = queries + target`),
    only to show that the tests can tell the two apart."""
    image_embedding = image_embedding.flatten(2).permute(0, 2, 1)
    image_pe = image_pe.flatten(2).permute(0, 2, 1)
    queries = point_embedding
    keys = image_embedding
    for layer in tr.layers:
        if target is not None:
            if inplace:
                queries += target  # in place: on layer 0 this is point_embedding itself
            else:
                queries = queries + target
        queries, keys = two_way_block(layer, queries, keys, point_embedding, image_pe, attn_sim)
    q = queries + point_embedding
    k = keys + image_pe
    if target is not None:
        q += target
    queries = queries + attention(tr.final_attn_token_to_image, q, k, keys)
    return tr.norm_final_attn(queries), keys


@torch.no_grad()
def mask_decoder(
    dec,
    image_embeddings,
    image_pe,
    sparse,
    dense,
    multimask,
    attn_sim=None,
    target=None,
    inplace=True,
):
    """per_segment_anything `MaskDecoder.forward` / `predict_masks` on a PyPI MaskDecoder."""
    output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
    output_tokens = output_tokens.unsqueeze(0).expand(sparse.size(0), -1, -1)
    tokens = torch.cat((output_tokens, sparse), dim=1)
    src = torch.repeat_interleave(image_embeddings, tokens.shape[0], dim=0) + dense
    pos_src = torch.repeat_interleave(image_pe, tokens.shape[0], dim=0)
    b, c, h, w = src.shape
    hs, src = two_way_transformer(dec.transformer, src, pos_src, tokens, attn_sim, target, inplace)
    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1 : 1 + dec.num_mask_tokens, :]
    src = src.transpose(1, 2).view(b, c, h, w)
    up = dec.output_upscaling(src)
    mlps = dec.output_hypernetworks_mlps
    hyper_in = torch.stack([mlps[i](mask_tokens_out[:, i, :]) for i in range(len(mlps))], dim=1)
    b, c, h, w = up.shape
    masks = (hyper_in @ up.view(b, c, h * w)).view(b, -1, h, w)
    iou = dec.iou_prediction_head(iou_token_out)
    sl = slice(1, None) if multimask else slice(0, 1)
    return masks[:, sl], iou[:, sl]


# ------------------------------------------------------------------ predictor


class Predictor:
    """The parts of per_segment_anything `SamPredictor` PerSAM uses, on a PyPI `Sam`, with
    the batch mapping: the image (H, W, 3), already SAM-normalised, is resized to the square
    input (bilinear, align_corners=True) and is its own "original"."""

    def __init__(self, sam):
        self.model = sam
        self.s = sam.image_encoder.img_size

    @torch.no_grad()
    def set_image(self, image, mask=None):
        """image (H, W, 3) float normalised; mask (H, W) binary -> preprocessed mask."""
        self.original_size = tuple(image.shape[:2])
        self.input_size = (self.s, self.s)
        x = torch.as_tensor(image).permute(2, 0, 1)[None]
        x = F.interpolate(x, (self.s, self.s), mode="bilinear", align_corners=True)
        self.features = self.model.image_encoder(x)
        if mask is None:
            return None
        rgb = np.zeros((*mask.shape, 3), np.float32)
        rgb[..., 0] = 128.0 * mask  # a PerSeg annotation: red 128
        m = torch.as_tensor(rgb).permute(2, 0, 1)[None]
        m = F.interpolate(m, (self.s, self.s), mode="bilinear", align_corners=True)
        return self.model.preprocess(m)

    def _scale(self):
        h, w = self.original_size
        return np.array([self.s / w, self.s / h])

    @torch.no_grad()
    def predict(
        self,
        point_coords,
        point_labels,
        box=None,
        mask_input=None,
        multimask_output=True,
        attn_sim=None,
        target_embedding=None,
    ):
        coords = torch.as_tensor(point_coords * self._scale(), dtype=torch.float)[None]
        labels = torch.as_tensor(point_labels, dtype=torch.int)[None]
        box_t = None
        if box is not None:
            b = np.asarray(box, np.float64).reshape(-1, 2, 2) * self._scale()
            box_t = torch.as_tensor(b.reshape(-1, 4), dtype=torch.float)[None]
        mask_t = None
        if mask_input is not None:
            mask_t = torch.as_tensor(mask_input, dtype=torch.float)[None]
        sparse, dense = self.model.prompt_encoder(
            points=(coords, labels), boxes=box_t, masks=mask_t
        )
        low, iou = mask_decoder(
            self.model.mask_decoder,
            self.features,
            self.model.prompt_encoder.get_dense_pe(),
            sparse,
            dense,
            multimask_output,
            attn_sim,
            target_embedding,
        )
        high = self.model.postprocess_masks(low, self.input_size, self.original_size)
        masks = high > self.model.mask_threshold
        return masks[0].numpy(), iou[0].numpy(), low[0].numpy(), high[0]


def point_selection(mask_sim, topk=1, negative=True):
    """Official `point_selection` (persam.py; persam_f.py without the negative point)."""
    w, h = mask_sim.shape
    topk_xy = mask_sim.flatten(0).topk(topk)[1]
    topk_x = (topk_xy // h).unsqueeze(0)
    topk_y = topk_xy - topk_x * h
    topk_xy = torch.cat((topk_y, topk_x), dim=0).permute(1, 0).numpy()
    topk_label = np.array([1] * topk)
    if not negative:
        return topk_xy, topk_label
    last_xy = mask_sim.flatten(0).topk(topk, largest=False)[1]
    last_x = (last_xy // h).unsqueeze(0)
    last_y = last_xy - last_x * h
    last_xy = torch.cat((last_y, last_x), dim=0).permute(1, 0).numpy()
    return (
        np.concatenate([topk_xy, last_xy], axis=0),
        np.concatenate([topk_label, np.array([0] * topk)], axis=0),
    )


def _similarity(predictor, target_feat, feat_chw):
    c, h, w = feat_chw.shape
    feat = feat_chw / feat_chw.norm(dim=0, keepdim=True)
    sim = (target_feat @ feat.reshape(c, h * w)).reshape(1, 1, h, w)
    sim = F.interpolate(sim, scale_factor=4, mode="bilinear")
    return predictor.model.postprocess_masks(
        sim, input_size=predictor.input_size, original_size=predictor.original_size
    ).squeeze()


def _bbox(mask):
    y, x = np.nonzero(mask)
    return np.array([x.min(), y.min(), x.max(), y.max()])


# ------------------------------------------------------------------ persam.py


@torch.no_grad()
def persam(sam, ref_image, ref_mask, test_image):
    """persam.py for one (reference, test) pair: (final mask logits (H, W), points, labels)."""
    predictor = Predictor(sam)
    ref_mask = predictor.set_image(ref_image, ref_mask)
    ref_feat = predictor.features.squeeze().permute(1, 2, 0)
    ref_mask = F.interpolate(ref_mask, size=ref_feat.shape[0:2], mode="bilinear")
    ref_mask = ref_mask.squeeze()[0]
    target_feat = ref_feat[ref_mask > 0]
    target_embedding = target_feat.mean(0).unsqueeze(0)
    target_feat = target_embedding / target_embedding.norm(dim=-1, keepdim=True)
    target_embedding = target_embedding.unsqueeze(0)

    predictor.set_image(test_image)
    sim = _similarity(predictor, target_feat, predictor.features.squeeze())
    topk_xy, topk_label = point_selection(sim, topk=1)
    sim = (sim - sim.mean()) / torch.std(sim)
    g = predictor.features.shape[-1]  # 64 officially: the embedding grid
    sim = F.interpolate(sim.unsqueeze(0).unsqueeze(0), size=(g, g), mode="bilinear")
    attn_sim = sim.sigmoid_().unsqueeze(0).flatten(3)

    masks, scores, logits, _ = predictor.predict(
        topk_xy,
        topk_label,
        multimask_output=False,
        attn_sim=attn_sim,
        target_embedding=target_embedding,
    )
    best_idx = 0
    masks, scores, logits, high = predictor.predict(
        topk_xy, topk_label, mask_input=logits[best_idx : best_idx + 1], multimask_output=True
    )
    best_idx = np.argmax(scores)
    box = _bbox(masks[best_idx])
    masks, scores, logits, high = predictor.predict(
        topk_xy,
        topk_label,
        box=box[None],
        mask_input=logits[best_idx : best_idx + 1],
        multimask_output=True,
    )
    best_idx = np.argmax(scores)
    return high[best_idx].numpy(), topk_xy, topk_label


# ------------------------------------------------------------------ persam_f.py


def dice_loss(inputs, targets):
    inputs = inputs.sigmoid().flatten(1)
    numerator = 2 * (inputs * targets).sum(-1)
    denominator = inputs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum()


def focal_loss(inputs, targets, alpha=0.25, gamma=2):
    prob = inputs.sigmoid()
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * ((1 - p_t) ** gamma)
    loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean(1).sum()


def calculate_iou(mask1, mask2):
    """persam_f_multi_obj.py `calculate_iou` on bool masks (0 / 0 = NaN, as there)."""
    with np.errstate(invalid="ignore"):
        return np.logical_and(mask1, mask2).sum() / np.logical_or(mask1, mask2).sum()


def persam_f(
    sam, ref_image, ref_mask, test_image, train_epoch=1000, lr=1e-3, max_objects=1, thr=0.8
):
    """persam_f.py for one (reference, test) pair: a dict with "logits" (H, W), "points",
    "labels", "weights" (3,), and "objects" / "union" for the multi-object loop.

    `max_objects` > 1: persam_f_multi_obj.py's test loop (found objects blacked out, the
    image re-encoded, stop at IoU >= `thr` with an earlier mask); "union" is the maximum
    over the kept objects' logits, "objects" their number. Its first iteration is
    persam_f.py's test, whose result is "logits".
    """
    predictor = Predictor(sam)
    gt_mask = torch.tensor(ref_mask > 0).float().unsqueeze(0).flatten(1)
    with torch.no_grad():
        ref_mask = predictor.set_image(ref_image, ref_mask)
        ref_feat = predictor.features.squeeze().permute(1, 2, 0)
        ref_mask = F.interpolate(ref_mask, size=ref_feat.shape[0:2], mode="bilinear")
        ref_mask = ref_mask.squeeze()[0]
        target_feat = ref_feat[ref_mask > 0]
        target_feat_mean = target_feat.mean(0)
        target_feat_max = torch.max(target_feat, dim=0)[0]
        target_feat = (target_feat_max / 2 + target_feat_mean / 2).unsqueeze(0)
        target_feat = target_feat / target_feat.norm(dim=-1, keepdim=True)
        sim = _similarity(predictor, target_feat, ref_feat.permute(2, 0, 1))
        topk_xy, topk_label = point_selection(sim, topk=1, negative=False)

    weights_param = torch.nn.Parameter(torch.ones(2, 1) / 3)  # Mask_Weights
    optimizer = torch.optim.AdamW([weights_param], lr=lr, eps=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, train_epoch)
    for _ in range(train_epoch):
        _, _, _, logits_high = predictor.predict(topk_xy, topk_label, multimask_output=True)
        logits_high = logits_high.flatten(1)
        weights = torch.cat((1 - weights_param.sum(0).unsqueeze(0), weights_param), dim=0)
        logits_high = (logits_high * weights).sum(0).unsqueeze(0)
        loss = dice_loss(logits_high, gt_mask) + focal_loss(logits_high, gt_mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    weights = torch.cat((1 - weights_param.sum(0).unsqueeze(0), weights_param), dim=0).detach()
    weights_np = weights.numpy()

    test_image = test_image.copy()
    black = (-sam.pixel_mean / sam.pixel_std).flatten().numpy()  # uint8 0, normalised
    history, union, first = [], None, None
    for _ in range(max_objects):
        final_mask, final_logits, topk_xy, topk_label = _persam_f_test(
            predictor, target_feat, weights, weights_np, test_image
        )
        if first is None:
            first = {"logits": final_logits, "points": topk_xy, "labels": topk_label}
        test_image[final_mask] = black
        if any(calculate_iou(h, final_mask) >= thr for h in history):
            break
        history.append(final_mask)
        union = final_logits if union is None else np.maximum(union, final_logits)
    return {**first, "weights": weights_np[:, 0], "union": union, "objects": len(history)}


@torch.no_grad()
def _persam_f_test(predictor, target_feat, weights, weights_np, test_image):
    """persam_f.py's test part for one image: (final mask, its logits, points, labels)."""
    predictor.set_image(test_image)
    sim = _similarity(predictor, target_feat, predictor.features.squeeze())
    topk_xy, topk_label = point_selection(sim, topk=1, negative=False)
    masks, scores, logits, logits_high = predictor.predict(
        topk_xy, topk_label, multimask_output=True
    )
    logit_high = (logits_high * weights.unsqueeze(-1)).sum(0)
    mask = (logit_high > 0).numpy()
    logit = (logits * weights_np[..., None]).sum(0)
    box = _bbox(mask)
    masks, scores, logits, high = predictor.predict(
        topk_xy, topk_label, box=box[None], mask_input=logit[None], multimask_output=True
    )
    best_idx = np.argmax(scores)
    box = _bbox(masks[best_idx])
    masks, scores, logits, high = predictor.predict(
        topk_xy,
        topk_label,
        box=box[None],
        mask_input=logits[best_idx : best_idx + 1],
        multimask_output=True,
    )
    best_idx = np.argmax(scores)
    return masks[best_idx], high[best_idx].numpy(), topk_xy, topk_label
