"""SAM's ViT image encoder (official: modeling/image_encoder.py), NHWC.

Module and parameter names follow the official module tree with list indices joined by
an underscore (`blocks.3` -> `blocks_3`, `neck.0` -> `neck_0`).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvrp.sam.common import Dtype, MLPBlock, layer_norm, layer_norm_2d
from jaxvrp.sam.config import ATTENTION_KINDS


def window_partition(x: jax.Array, window_size: int) -> tuple[jax.Array, tuple[int, int]]:
    """(B, H, W, C) -> (B * nW, ws, ws, C), zero-padding H, W up to multiples of ws.

    As in the official code the padding is plain zeros added after norm1 and is not masked
    out of the attention: padded tokens act as keys.
    """
    b, h, w, c = x.shape
    pad_h = (window_size - h % window_size) % window_size
    pad_w = (window_size - w % window_size) % window_size
    if pad_h or pad_w:
        x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    hp, wp = h + pad_h, w + pad_w
    x = x.reshape(b, hp // window_size, window_size, wp // window_size, window_size, c)
    windows = x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)
    return windows, (hp, wp)


def window_unpartition(
    windows: jax.Array, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> jax.Array:
    """Inverse of `window_partition`: (B * nW, ws, ws, C) -> (B, H, W, C)."""
    hp, wp = pad_hw
    h, w = hw
    b = windows.shape[0] // ((hp // window_size) * (wp // window_size))
    x = windows.reshape(b, hp // window_size, wp // window_size, window_size, window_size, -1)
    x = x.transpose(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :]


def get_rel_pos(q_size: int, k_size: int, rel_pos: jax.Array) -> jax.Array:
    """Relative position table (2S-1, C) -> per (query, key) pair (q_size, k_size, C)."""
    if rel_pos.shape[0] != 2 * max(q_size, k_size) - 1:
        # The official code interpolates the table here; SAM's encoder always runs at its
        # configured size, so a mismatch can only be a wrong config.
        raise ValueError(
            f"relative position table of length {rel_pos.shape[0]} does not fit "
            f"q_size={q_size}, k_size={k_size}"
        )
    q_coords = jnp.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
    k_coords = jnp.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    # jnp.asarray: a numpy table (params as loaded, closed over by a jitted function) cannot
    # be indexed by traced indices
    return jnp.asarray(rel_pos)[relative.astype(jnp.int32)]


def fused_implementation(head_dim: int, dtype: Dtype) -> str:
    """`jax.nn.dot_product_attention`'s implementation for this platform: "cudnn" (flash
    attention) on NVIDIA GPUs when the dtype is bf16/fp16 and the head dim fits cuDNN's
    limits (a multiple of 8, at most 256 on Hopper and later, 128 before), else "xla"."""
    device = jax.devices()[0]
    if device.platform != "gpu" or "nvidia" not in device.device_kind.lower():
        return "xla"
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return "xla"
    major = int(str(getattr(device, "compute_capability", "0")).split(".")[0])
    if head_dim % 8 or head_dim > (256 if major >= 9 else 128):
        return "xla"
    return "cudnn"


def _pad_last(x: jax.Array, size: int) -> jax.Array:
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, size - x.shape[-1])])


def rel_pos_augmented_qkv(
    q: jax.Array, k: jax.Array, v: jax.Array, rel_h: jax.Array, rel_w: jax.Array, scale: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Fold the decomposed relative positions exactly into the q/k dot product.

    q, k, v (B, H*W, n, d); rel_h (B, H, W, n, H) = q . R_h[qy, ky]; rel_w (B, H, W, n, W).
    Returns q', k', v' (B, H*W, n, D) with D = d + H + W rounded up to a multiple of 8
    (cuDNN's requirement; the extra channels are zeros), such that
    q' . k' = scale * q . k + rel_h[qy, qx, ky] + rel_w[qy, qx, kx]: q' = [scale q, rel_h,
    rel_w], k' = [k, onehot(ky), onehot(kx)]. v is zero-padded to D (the fused kernels take
    one head dim); the output's first d channels are the attention output.
    """
    b, n_tok, n, d = q.shape
    h, w = rel_h.shape[1], rel_w.shape[2]
    size = -(-(d + h + w) // 8) * 8
    q_aug = jnp.concatenate(
        [
            q * jnp.asarray(scale, q.dtype),
            rel_h.reshape(b, n_tok, n, h),
            rel_w.reshape(b, n_tok, n, w),
        ],
        axis=-1,
    )
    ky = jnp.broadcast_to(jnp.eye(h, dtype=k.dtype)[:, None, :], (h, w, h)).reshape(n_tok, h)
    kx = jnp.broadcast_to(jnp.eye(w, dtype=k.dtype)[None, :, :], (h, w, w)).reshape(n_tok, w)
    ind = jnp.broadcast_to(jnp.concatenate([ky, kx], -1)[None, :, None, :], (b, n_tok, n, h + w))
    k_aug = jnp.concatenate([k, ind], axis=-1)
    return _pad_last(q_aug, size), _pad_last(k_aug, size), _pad_last(v, size)


class Attention(nn.Module):
    """Multi-head self-attention with decomposed relative positions (MViTv2).

    `attention` chooses how it is computed, all equal up to rounding:
    - "xla": the official formulation (logits, + rel_h + rel_w, softmax, @ v) in XLA ops.
    - "dot_product": `jax.nn.dot_product_attention` on q, k augmented so that their dot
      product carries the relative positions (`rel_pos_augmented_qkv`); cuDNN flash
      attention on NVIDIA GPUs where it applies (`fused_implementation`).
    - "dot_product_bias": `jax.nn.dot_product_attention` with the relative positions as an
      additive (B, heads, N, N) `bias`.
    """

    dim: int
    num_heads: int
    qkv_bias: bool = True
    use_rel_pos: bool = True
    input_size: tuple[int, int] = (64, 64)
    dtype: Dtype = jnp.float32
    attention: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C) -> (B, H, W, C)."""
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")
        b, h, w, c = x.shape
        head_dim = self.dim // self.num_heads
        scale = head_dim**-0.5
        qkv = nn.Dense(3 * self.dim, use_bias=self.qkv_bias, dtype=self.dtype, name="qkv")(x)
        qkv = qkv.reshape(b, h * w, 3, self.num_heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, N, heads, hd)
        tables = None
        if self.use_rel_pos:
            rel_pos_h = self.param(
                "rel_pos_h", nn.initializers.zeros, (2 * self.input_size[0] - 1, head_dim)
            )
            rel_pos_w = self.param(
                "rel_pos_w", nn.initializers.zeros, (2 * self.input_size[1] - 1, head_dim)
            )
            rh = get_rel_pos(h, h, rel_pos_h).astype(q.dtype)  # (H, H, hd)
            rw = get_rel_pos(w, w, rel_pos_w).astype(q.dtype)  # (W, W, hd)
            r_q = q.reshape(b, h, w, self.num_heads, head_dim)  # unscaled q, as officially
            tables = r_q, rh, rw
        if self.attention == "xla":
            out = self._xla(q, k, v, tables, scale, h, w)
        else:
            out = self._fused(q, k, v, tables, scale, h, w)
        out = out.reshape(b, h, w, self.dim)
        return nn.Dense(self.dim, dtype=self.dtype, name="proj")(out)

    def _xla(self, q, k, v, tables, scale, h, w):
        """The official formulation: (B, N, heads, hd) -> (B, N, heads, hd)."""
        b, n = q.shape[0], self.num_heads
        attn = jnp.einsum("bqnd,bknd->bnqk", q * scale, k)
        if tables is not None:
            r_q, rh, rw = tables
            rel_h = jnp.einsum("byxnc,ykc->bnyxk", r_q, rh)
            rel_w = jnp.einsum("byxnc,xkc->bnyxk", r_q, rw)
            attn = attn.reshape(b, n, h, w, h, w)
            attn = attn + rel_h[..., :, None] + rel_w[..., None, :]
            attn = attn.reshape(b, n, h * w, h * w)
        attn = jax.nn.softmax(attn.astype(jnp.float32), axis=-1).astype(v.dtype)
        return jnp.einsum("bnqk,bknd->bqnd", attn, v)

    def _fused(self, q, k, v, tables, scale, h, w):
        """`jax.nn.dot_product_attention`: (B, N, heads, hd) -> (B, N, heads, hd)."""
        b, n, head_dim = q.shape[0], self.num_heads, q.shape[-1]
        if tables is None:
            impl = fused_implementation(head_dim, q.dtype)
            return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation=impl)
        r_q, rh, rw = tables
        if self.attention == "dot_product":
            rel_h = jnp.einsum("byxnc,ykc->byxnk", r_q, rh)  # (B, H, W, heads, H)
            rel_w = jnp.einsum("byxnc,xkc->byxnk", r_q, rw)  # (B, H, W, heads, W)
            qa, ka, va = rel_pos_augmented_qkv(q, k, v, rel_h, rel_w, scale)
            impl = fused_implementation(qa.shape[-1], qa.dtype)
            # the scale is already in q': the kernel's own scale must be 1
            out = jax.nn.dot_product_attention(qa, ka, va, scale=1.0, implementation=impl)
            return out[..., :head_dim]
        rel_h = jnp.einsum("byxnc,ykc->bnyxk", r_q, rh)  # (B, heads, H, W, H)
        rel_w = jnp.einsum("byxnc,xkc->bnyxk", r_q, rw)  # (B, heads, H, W, W)
        bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, n, h * w, h * w)
        impl = fused_implementation(head_dim, q.dtype)
        return jax.nn.dot_product_attention(q, k, v, bias=bias, scale=scale, implementation=impl)


class Block(nn.Module):
    """Transformer block with windowed (window_size > 0) or global attention."""

    dim: int
    num_heads: int
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    use_rel_pos: bool = True
    window_size: int = 0
    input_size: tuple[int, int] = (64, 64)
    dtype: Dtype = jnp.float32
    attention: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shortcut = x
        x = layer_norm(1e-6, self.dtype, "norm1")(x)
        if self.window_size > 0:
            h, w = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, self.window_size)
        attn_size = (
            self.input_size if self.window_size == 0 else (self.window_size, self.window_size)
        )
        x = Attention(
            self.dim,
            self.num_heads,
            self.qkv_bias,
            self.use_rel_pos,
            attn_size,
            self.dtype,
            self.attention,
            name="attn",
        )(x)
        if self.window_size > 0:
            x = window_unpartition(x, self.window_size, pad_hw, (h, w))
        x = shortcut + x
        y = layer_norm(1e-6, self.dtype, "norm2")(x)
        return x + MLPBlock(
            self.dim, int(self.dim * self.mlp_ratio), "gelu", self.dtype, name="mlp"
        )(y)


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: (B, H, W, 3) -> (B, H/p, W/p, dim)."""

    patch_size: int
    embed_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.patch_size
        return nn.Conv(
            self.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, name="proj"
        )(x)


def block_period(depth: int, global_attn_indexes: tuple[int, ...]) -> int:
    """P such that blocks come in depth / P groups of (P - 1 windowed blocks, 1 global
    block): global indexes P-1, 2P-1, ..., depth-1, as in every official variant
    ([2, 5, 8, 11] for ViT-B: P = 3; ViT-L: 6; ViT-H: 8). Else a ValueError."""
    g = tuple(global_attn_indexes)
    n = len(g)
    if n and depth % n == 0 and g == tuple(range(depth // n - 1, depth, depth // n)):
        return depth // n
    raise ValueError(
        f"scan_blocks needs global attention every P-th block ending with the last "
        f"(P-1, 2P-1, ..., depth-1); got global_attn_indexes={list(g)} for depth {depth}"
    )


def stack_blocks(encoder: dict, depth: int, period: int) -> dict:
    """Per-block params (`blocks_0` ... `blocks_{depth-1}`) -> the scanned layout:
    `blocks` = {`blocks_j`: block (g * period + j) stacked over the groups g}, each leaf with
    a leading (depth / period) axis. Other entries are kept. A pure function of the tree."""
    names = [f"blocks_{i}" for i in range(depth)]
    missing = [n for n in names if n not in encoder]
    if missing or "blocks" in encoder:
        raise ValueError(f"not the per-block layout: missing {missing[:3]}..., or has 'blocks'")
    out = {k: v for k, v in encoder.items() if k not in names}
    out["blocks"] = {
        f"blocks_{j}": jax.tree.map(
            lambda *xs: jnp.stack(xs),
            *(encoder[names[g * period + j]] for g in range(depth // period)),
        )
        for j in range(period)
    }
    return out


def unstack_blocks(encoder: dict, depth: int, period: int) -> dict:
    """Inverse of `stack_blocks`: the scanned layout -> `blocks_0` ... `blocks_{depth-1}`."""
    if "blocks" not in encoder:
        raise ValueError("not the scanned layout: no 'blocks' entry")
    out = {k: v for k, v in encoder.items() if k != "blocks"}
    for g in range(depth // period):
        for j in range(period):
            out[f"blocks_{g * period + j}"] = jax.tree.map(
                lambda x, g=g: x[g], encoder["blocks"][f"blocks_{j}"]
            )
    return out


class _BlockGroup(nn.Module):
    """`period - 1` windowed blocks then one global block: the body of the block scan."""

    period: int
    block: dict  # Block's keyword arguments except window_size

    @nn.compact
    def __call__(self, x: jax.Array, _: None) -> tuple[jax.Array, None]:
        for j in range(self.period):
            last = j == self.period - 1
            window = 0 if last else self.block["window_size"]
            kwargs = {**self.block, "window_size": window}
            x = Block(**kwargs, name=f"blocks_{j}")(x)
        return x, None


class ImageEncoderViT(nn.Module):
    """(B, S, S, 3) normalised, padded images -> (B, S/16, S/16, out_chans) embeddings."""

    img_size: int = 1024
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    out_chans: int = 256
    qkv_bias: bool = True
    use_rel_pos: bool = True
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = ()
    dtype: Dtype = jnp.float32
    attention: str = "xla"  # see `Attention`
    # One `nn.scan` over groups of (windowed blocks..., global block) instead of `depth`
    # unrolled blocks: the same function, compiled once per group (params: `stack_blocks`).
    scan_blocks: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        grid = self.img_size // self.patch_size
        x = PatchEmbed(self.patch_size, self.embed_dim, self.dtype, name="patch_embed")(x)
        pos_embed = self.param("pos_embed", nn.initializers.zeros, (1, grid, grid, self.embed_dim))
        x = x + pos_embed.astype(x.dtype)
        block = dict(
            dim=self.embed_dim,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            qkv_bias=self.qkv_bias,
            use_rel_pos=self.use_rel_pos,
            input_size=(grid, grid),
            dtype=self.dtype,
            attention=self.attention,
        )
        if self.scan_blocks:
            period = block_period(self.depth, self.global_attn_indexes)
            scan = nn.scan(
                _BlockGroup,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                length=self.depth // period,
            )
            x, _ = scan(period, {**block, "window_size": self.window_size}, name="blocks")(x, None)
        for i in range(0 if self.scan_blocks else self.depth):
            window = 0 if i in self.global_attn_indexes else self.window_size
            x = Block(**block, window_size=window, name=f"blocks_{i}")(x)
        return neck(x, self.out_chans, self.dtype)


NECK = ("neck_0", "neck_1", "neck_2", "neck_3")


def neck(x: jax.Array, out_chans: int, dtype: Dtype) -> jax.Array:
    """The official `neck` (1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d) on the last
    block's output; called inside a compact method, its layers are that module's `NECK`."""
    x = nn.Conv(out_chans, (1, 1), use_bias=False, dtype=dtype, name="neck_0")(x)
    x = layer_norm_2d(dtype, "neck_1")(x)
    x = nn.Conv(
        out_chans, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=dtype, name="neck_2"
    )(x)
    return layer_norm_2d(dtype, "neck_3")(x)


class Neck(nn.Module):
    """The encoder's neck alone, under the encoder's parameter names (`model.encode_neck`)."""

    out_chans: int = 256
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return neck(x, self.out_chans, self.dtype)
