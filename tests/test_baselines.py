"""GP-SAM and oracle-box baselines (`jaxvrp.baselines`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvrp import baselines, frozen
from jaxvrp.data.annotations import tight_box
from jaxvrp.image import resize_bilinear
from jaxvrp.learners import vrp
from jaxvrp.sam import config as sam_config
from jaxvrp.sam import model


def test_gp_sam_prompts_come_from_the_thresholded_pseudo_mask():
    pm = np.zeros((2, 8, 8), np.float32)
    pm[0, 2:4, 5:7] = 1.0  # 4 cells above 0.5
    pm[1] = 0.1
    pm[1, 7, 0] = 0.3  # nothing above 0.5: the best cell
    points, boxes = baselines.gp_sam_prompts(
        jnp.asarray(pm), jax.random.key(0), num_points=5, threshold=0.5, scale=128
    )
    cell = 128 / 8
    xs, ys = np.asarray(points[0, :, 0]) / cell - 0.5, np.asarray(points[0, :, 1]) / cell - 0.5
    assert set(xs.round().astype(int)) <= {5, 6} and set(ys.round().astype(int)) <= {2, 3}
    np.testing.assert_allclose(boxes[0], [5 * cell, 2 * cell, 7 * cell, 4 * cell])
    np.testing.assert_allclose(points[1], np.tile([[0.5 * cell, 7.5 * cell]], (5, 1)))
    np.testing.assert_allclose(boxes[1], [0, 7 * cell, cell, 8 * cell])


@pytest.fixture(scope="module")
def setup():
    sam = sam_config.get_config("tiny_128")
    params = model.init(jax.random.key(0), sam)
    config = baselines.make_gp_sam_config("sam_tiny_128", "tiny_128")
    fz = {"sam": params, "backbone": frozen.sam_backbone_params(params, config.vrp)}
    rng = np.random.default_rng(0)
    mask = np.zeros((2, 64, 64), np.float32)
    mask[0, 10:30, 5:40] = 1
    mask[1, 40:60, 30:50] = 1
    batch = {
        "query_image": rng.normal(size=(2, 64, 64, 3)).astype(np.float32),
        "support_images": rng.normal(size=(2, 2, 64, 64, 3)).astype(np.float32),
        "support_annotations": np.stack([mask, mask[::-1]], axis=1),
        "query_mask": mask,
    }
    return sam, params, config, fz, batch


def test_oracle_box_is_sam_with_the_scaled_tight_box(setup):
    sam, params, config, fz, batch = setup
    got = baselines.oracle_box({}, fz, batch, config=baselines.make_oracle_box_config("tiny_128"))
    emb = vrp.sam_embeddings(params, batch["query_image"], config.vrp)
    boxes = np.stack([tight_box(m) for m in batch["query_mask"]]) * 2  # 64 -> 128 px
    low, _ = model.predict_masks(params, emb, config=sam, boxes=boxes, multimask_output=False)
    want = resize_bilinear(low[:, 0], (64, 64), align_corners=True, channels_last=False)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_gp_sam_modes_run_and_differ(setup):
    _, _, config, fz, batch = setup
    out = {}
    for m in baselines.GP_MODES:
        c = baselines.make_gp_sam_config("sam_tiny_128", "tiny_128", mode=m)
        out[m] = np.asarray(baselines.gp_sam({}, fz, batch, config=c, rng=jax.random.key(1)))
    assert all(v.shape == (2, 64, 64) and np.isfinite(v).all() for v in out.values())
    assert not np.allclose(out["points"], out["box"])
    with pytest.raises(ValueError, match="mode"):
        baselines.make_gp_sam_config("sam_tiny_128", "tiny_128", mode="scribble")
    pm = baselines.pseudo_mask(fz, batch, config.vrp)
    assert pm.shape == (2, 16, 16) and float(pm.max()) <= 1.0 + 1e-6
