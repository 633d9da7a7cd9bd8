"""Segmentation losses of the learners (VRP-SAM `compute_objective`, ProSAM eq. 4)."""

import jax
import jax.numpy as jnp
import optax


def segmentation_loss(
    logits: jax.Array, target: jax.Array, ignore: jax.Array | None = None
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """BCE-with-logits (mean over pixels) + Dice (official: smoothed by 1, mean over batch).

    logits, target (B, H, W); ignore (B, H, W) bool marks pixels left out of both terms
    (e.g. PASCAL's 255 boundary label). Returns (bce + dice, {"bce", "dice"}).
    """
    logits = jnp.asarray(logits, jnp.float32)
    target = jnp.asarray(target, jnp.float32)
    valid = jnp.ones_like(target) if ignore is None else 1.0 - ignore.astype(jnp.float32)
    bce = optax.sigmoid_binary_cross_entropy(logits, target)
    bce = (bce * valid).sum() / jnp.maximum(valid.sum(), 1.0)
    p = jax.nn.sigmoid(logits) * valid
    t = target * valid
    num = 2.0 * (p * t).sum(axis=(1, 2))
    den = p.sum(axis=(1, 2)) + t.sum(axis=(1, 2))
    dice = (1.0 - (num + 1.0) / (den + 1.0)).mean()
    return bce + dice, {"bce": bce, "dice": dice}
