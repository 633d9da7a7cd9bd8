"""ProSAM: VRP-SAM's encoder with probabilistic prompts (papers/prosam.md, no public code).

Two linear heads on the VRP prompt features give a mean and a log standard deviation per
prompt; prompts are drawn from a multivariate Student-t (eq. 5) by reparameterisation,

    z = mu + sigma / sqrt(1 + n / nu) * sqrt((nu + n) / delta) * eps,
    eps ~ N(0, I),  delta ~ chi^2(nu + n) (one draw per prompt vector),

which is eq. 5's t(mu, diag(sigma^2) / (1 + n / nu), nu + n). (Eq. 7 as typeset reads
(nu + n) / sqrt(delta); that does not give eq. 5's distribution, so eq. 5 is implemented and
tested statistically.) Training minimises the mean loss over K samples (eq. 10, K = 10,
nu = 5), computed with `jax.vmap` over K keys; inference uses mu, or one of the merges of
K sampled masks of the paper's Table 8.

Parameters: `{"vrp": VRP-SAM's parameters, "mu_head": ..., "log_sigma_head": ...}`.
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvrp.learners import protocol, registry, vrp
from jaxvrp.learners.losses import segmentation_loss
from jaxvrp.learners.protocol import FrozenSpec, Learner

Params = dict[str, Any]

INFERENCE = ("mean", "max_logits", "mean_logits", "max_binary", "mean_binary", "majority")


@dataclasses.dataclass(frozen=True)
class ProSAMConfig:
    vrp: vrp.VRPConfig
    nu: float = 5.0  # paper §5.1
    num_samples: int = 10  # K, paper §5.1
    distribution: str = "student_t"  # or "gaussian" (Table 4 ablation)
    # n of eq. 5: the size of one prompt vector ("prompt", default) or of all the prompts of
    # an image ("image": one chi^2 draw shared by an image's prompt set).
    n_per: str = "prompt"
    inference: str = "mean"  # one of INFERENCE (Table 8)
    # log sigma is clamped to this range (ours; the paper has no clamp): a diverging
    # sigma head cannot overflow exp(), and training reports sigma's statistics
    log_sigma_min: float = -20.0
    log_sigma_max: float = 10.0


def make_config(
    backbone: str = "resnet50_deepstem", sam: str = "vit_h", **overrides: Any
) -> ProSAMConfig:
    own = {f.name for f in dataclasses.fields(ProSAMConfig)} - {"vrp"}
    mine = {k: overrides.pop(k) for k in list(overrides) if k in own}
    config = ProSAMConfig(vrp.make_config(backbone, sam, **overrides), **mine)
    if config.distribution not in ("student_t", "gaussian"):
        raise ValueError(
            f"distribution must be 'student_t' or 'gaussian', got {config.distribution!r}"
        )
    if config.n_per not in ("prompt", "image"):
        raise ValueError(f"n_per must be 'prompt' or 'image', got {config.n_per!r}")
    if config.inference not in INFERENCE:
        raise ValueError(f"inference must be one of {INFERENCE}, got {config.inference!r}")
    if not config.log_sigma_min < config.log_sigma_max:
        raise ValueError(
            f"log_sigma_min {config.log_sigma_min} must be below log_sigma_max "
            f"{config.log_sigma_max}"
        )
    return config


class ProSAMEncoder(nn.Module):
    config: ProSAMConfig

    @nn.compact
    def __call__(self, *feats, train: bool, rng: jax.Array | None):
        """VRP features -> (mu, sigma), each (B, Q, C)."""
        h = vrp.VRPEncoder(self.config.vrp, name="vrp")(*feats, train=train, rng=rng)
        c = h.shape[-1]
        mu = nn.Dense(c, name="mu_head")(h)
        log_sigma = nn.Dense(c, name="log_sigma_head")(h)
        cfg = self.config
        return mu, jnp.exp(jnp.clip(log_sigma, cfg.log_sigma_min, cfg.log_sigma_max))


def sample_prompts(
    rng: jax.Array,
    mu: jax.Array,
    sigma: jax.Array,
    *,
    nu: float,
    num_samples: int,
    n: int | None = None,
    per: str = "prompt",
    distribution: str = "student_t",
) -> jax.Array:
    """Draw `num_samples` prompt sets: (num_samples, *mu.shape).

    mu, sigma (..., C). `per="prompt"`: one chi^2 draw per prompt vector and n defaults to C;
    `per="image"`: one draw per leading-axis item (an image's (Q, C) prompt set) and n
    defaults to Q * C. `distribution="gaussian"`: z = mu + sigma * eps. `rng`: one key, or
    (B,) per-example keys for mu, sigma (B, ..., C), each example's samples drawn from its
    own key (`jaxvrp.learners.protocol`).
    """
    if protocol.per_example(rng):
        one = lambda key, m, s: sample_prompts(
            key,
            m[None],
            s[None],
            nu=nu,
            num_samples=num_samples,
            n=n,
            per=per,
            distribution=distribution,
        )[:, 0]
        return jnp.swapaxes(jax.vmap(one)(rng, mu, sigma), 0, 1)
    k_eps, k_delta = jax.random.split(rng)
    eps = jax.random.normal(k_eps, (num_samples, *mu.shape), mu.dtype)
    if distribution == "gaussian":
        return mu + sigma * eps
    if per == "prompt":
        delta_shape = (num_samples, *mu.shape[:-1], 1)
        n = mu.shape[-1] if n is None else n
    elif per == "image":
        delta_shape = (num_samples, mu.shape[0]) + (1,) * (mu.ndim - 1)
        n = math.prod(mu.shape[1:]) if n is None else n
    else:
        raise ValueError(f"per must be 'prompt' or 'image', got {per!r}")
    delta = jax.random.chisquare(k_delta, nu + n, delta_shape, mu.dtype)
    scale = sigma / jnp.sqrt(1.0 + n / nu)
    return mu + scale * jnp.sqrt((nu + n) / delta) * eps


def encode_distribution(
    params: Params,
    frozen: Params,
    batch: dict,
    *,
    config: ProSAMConfig,
    train: bool,
    rng: jax.Array | None,
    feats: tuple[jax.Array, ...] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(mu, sigma), each (B, K_shots * Q, C); `feats`: `vrp.shot_features` already computed."""
    feats = vrp.shot_features(frozen, batch, config.vrp) if feats is None else feats
    rng = protocol.shot_keys(rng, batch["support_images"].shape[1])  # per-example: per shot
    mu, sigma = ProSAMEncoder(config).apply({"params": params}, *feats, train=train, rng=rng)
    b = batch["support_images"].shape[0]
    return mu.reshape(b, -1, mu.shape[-1]), sigma.reshape(b, -1, sigma.shape[-1])


def _sample_kwargs(config: ProSAMConfig) -> dict:
    return dict(nu=config.nu, per=config.n_per, distribution=config.distribution)


def loss_fn(
    params: Params,
    frozen: Params,
    batch: dict,
    *,
    config: ProSAMConfig,
    rng: jax.Array,
    train: bool = True,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean over K samples of BCE + Dice (eq. 10): a `jax.vmap` over K sample keys of a
    single-sample sample -> decode -> loss; the SAM image embedding is computed once.
    Metrics: bce, dice, and sigma's mean / min / max over the batch's prompts."""
    r_drop, r_sample = protocol.split_keys(rng)
    feats, emb = vrp.frozen_features(frozen, batch, config.vrp)
    mu, sigma = encode_distribution(
        params, frozen, batch, config=config, train=train, rng=r_drop, feats=feats
    )
    out_size = batch["query_image"].shape[1:3]

    def one_sample(key):
        z = sample_prompts(key, mu, sigma, num_samples=1, **_sample_kwargs(config))[0]
        logits = vrp.decode_with_prompts(frozen["sam"], emb, z, out_size, config.vrp)
        return segmentation_loss(logits, batch["query_mask"], batch.get("query_ignore"))

    losses, parts = jax.vmap(one_sample)(protocol.split_keys(r_sample, config.num_samples))
    health = {"sigma_mean": sigma.mean(), "sigma_min": sigma.min(), "sigma_max": sigma.max()}
    # a non-finite sigma statistic stops training like a non-finite loss (jaxvrp.loop)
    return losses.mean(), {**{k: v.mean() for k, v in parts.items()}, **health}


def apply(
    params: Params,
    frozen: Params,
    batch: dict,
    *,
    config: ProSAMConfig,
    rng: jax.Array | None = None,
    train: bool = False,
    num_samples: int | None = None,
) -> jax.Array:
    """Target scores (B, H, W), foreground where > 0, by `config.inference`.

    "mean": logits of the mean prompts (the paper's inference). With K = `num_samples`
    (default `config.num_samples`) sampled prompt sets: "max_logits" / "mean_logits" merge
    logits; "max_binary" (union), "mean_binary" (mean of binary masks >= 0.5) and
    "majority" (strictly more than K / 2 votes) merge binary masks (logit > 0, i.e.
    probability > 0.5) and return +1 / -1.
    """
    r_drop, r_sample = protocol.split_keys(rng) if rng is not None else (None, None)
    feats, emb = vrp.frozen_features(frozen, batch, config.vrp)
    mu, sigma = encode_distribution(
        params, frozen, batch, config=config, train=train, rng=r_drop, feats=feats
    )
    out_size = batch["query_image"].shape[1:3]
    decode = lambda z: vrp.decode_with_prompts(frozen["sam"], emb, z, out_size, config.vrp)
    if config.inference == "mean":
        return decode(mu)
    if r_sample is None:
        raise ValueError(f"inference {config.inference!r} samples prompts and needs an rng")
    k = config.num_samples if num_samples is None else num_samples
    z = sample_prompts(r_sample, mu, sigma, num_samples=k, **_sample_kwargs(config))
    logits = jax.vmap(decode)(z)  # (K, B, H, W)
    if config.inference == "max_logits":
        return logits.max(axis=0)
    if config.inference == "mean_logits":
        return logits.mean(axis=0)
    votes = (logits > 0).astype(jnp.float32).mean(axis=0)
    if config.inference == "max_binary":
        fg = votes > 0
    elif config.inference == "mean_binary":
        fg = votes >= 0.5
    else:  # majority
        fg = votes > 0.5
    return jnp.where(fg, 1.0, -1.0)


def init(rng: jax.Array, config: ProSAMConfig) -> Params:
    """Fresh ProSAM parameters: VRP-SAM's plus the two heads."""
    feats = vrp.feature_placeholders(config.vrp)
    return ProSAMEncoder(config).init(rng, *feats, train=False, rng=None)["params"]


def frozen_spec(config: ProSAMConfig) -> FrozenSpec:
    return vrp.frozen_spec(config.vrp)


LEARNER = registry.register(
    Learner(
        name="prosam",
        title="ProSAM",
        make_config=make_config,
        init=init,
        apply=apply,
        loss_fn=loss_fn,
        frozen=frozen_spec,
        module=__name__,
        backbone_stages=lambda c: vrp.precomputable_stages(c.vrp),  # vrp.shot_features
    )
)
