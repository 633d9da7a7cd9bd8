"""`Predictor` end to end against the official `SamPredictor` on the same random weights."""

import numpy as np
import pytest
import torch

from conversion.official import import_segment_anything
from jaxvrp.sam import Predictor
from tests.conftest import rel_l2
from tests.sam.official import TOL, official_and_params

H, W = 480, 640  # non-square: exercises resize, padding, crop and the final resize


def _image(seed=0, h=H, w=W):
    rs = np.random.RandomState(seed)
    # smooth structure plus noise, so the PIL resize has something to interpolate
    yy, xx = np.mgrid[:h, :w]
    base = 127 + 100 * np.sin(xx / 37.0)[..., None] * np.cos(yy / 23.0)[..., None]
    img = base + rs.randint(-20, 21, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def predictors():
    ref, params, config = official_and_params("test_tiny")
    sa = import_segment_anything()
    official = sa.SamPredictor(ref)
    ours = Predictor(params, config)
    image = _image()
    official.set_image(image)
    ours.set_image(image)
    return official, ours


def _mask_input(seed=1):
    return (3 * np.random.RandomState(seed).randn(1, 256, 256)).astype(np.float32)


def _assert_masks_match(masks, logits, ref_masks):
    """Binary masks identical except where the logit is within 1e-4 of the threshold."""
    differ = masks != ref_masks
    assert np.all(np.abs(logits[differ]) < 1e-4), f"{differ.sum()} pixels differ"


def test_image_embedding_matches(predictors):
    official, ours = predictors
    assert ours.original_size == official.original_size == (H, W)
    assert ours.input_size == official.input_size == (768, 1024)
    emb = ours.get_image_embedding()
    assert emb.shape == (1, 256, 64, 64)
    assert rel_l2(emb, official.get_image_embedding().numpy()) <= TOL


@pytest.mark.parametrize("multimask", [True, False])
def test_points_box_and_mask_input(predictors, multimask):
    official, ours = predictors
    kwargs = dict(
        point_coords=np.array([[100.0, 200.0], [400.5, 300.25], [600.0, 50.0]]),
        point_labels=np.array([1, 0, 1]),
        box=np.array([50.0, 40.0, 500.0, 420.0]),
        mask_input=_mask_input(),
        multimask_output=multimask,
    )
    ref_logits, ref_iou, ref_low = official.predict(**kwargs, return_logits=True)
    ref_masks, _, _ = official.predict(**kwargs)
    logits, iou, low = ours.predict(**kwargs, return_logits=True)
    masks, iou2, low2 = ours.predict(**kwargs)
    c = 3 if multimask else 1
    assert logits.shape == (c, H, W) and iou.shape == (c,) and low.shape == (c, 256, 256)
    assert masks.dtype == bool and masks.shape == ref_masks.shape
    assert rel_l2(low, ref_low) <= TOL
    assert rel_l2(logits, ref_logits) <= TOL
    assert rel_l2(iou, ref_iou) <= TOL
    _assert_masks_match(masks, logits, ref_masks)
    np.testing.assert_array_equal(iou2, iou)
    np.testing.assert_array_equal(low2, low)


@pytest.mark.parametrize(
    "prompt",
    [
        dict(point_coords=np.array([[320.0, 240.0]]), point_labels=np.array([1])),
        dict(box=np.array([10.0, 20.0, 300.0, 400.0])),
        dict(mask_input=_mask_input(2)),
    ],
    ids=["point", "box", "mask"],
)
def test_single_prompt_kinds(predictors, prompt):
    official, ours = predictors
    ref_logits, ref_iou, _ = official.predict(**prompt, return_logits=True)
    logits, iou, _ = ours.predict(**prompt, return_logits=True)
    assert rel_l2(logits, ref_logits) <= TOL
    assert rel_l2(iou, ref_iou) <= TOL


def test_predict_batch_matches_official_predict_torch(predictors):
    official, ours = predictors
    rs = np.random.RandomState(3)
    p = 5
    coords = rs.rand(p, 2, 2) * [W, H]
    labels = rs.randint(0, 2, (p, 2))
    x0y0 = rs.rand(p, 2) * [W / 2, H / 2]
    boxes = np.concatenate([x0y0, x0y0 + rs.rand(p, 2) * [W / 2, H / 2]], axis=1)
    t = official.transform
    ref_logits, ref_iou, _ = official.predict_torch(
        torch.as_tensor(t.apply_coords(coords, (H, W)), dtype=torch.float),
        torch.as_tensor(labels, dtype=torch.int),
        torch.as_tensor(t.apply_boxes(boxes, (H, W)), dtype=torch.float),
        multimask_output=True,
        return_logits=True,
    )
    logits, iou, low = ours.predict_batch(coords, labels, boxes, return_logits=True)
    assert logits.shape == (p, 3, H, W) and iou.shape == (p, 3) and low.shape == (p, 3, 256, 256)
    assert rel_l2(logits, ref_logits.numpy()) <= TOL
    assert rel_l2(iou, ref_iou.numpy()) <= TOL


def test_bgr_input_equals_rgb_input():
    _, params, config = official_and_params("test_small_image")
    image = _image(4, 100, 150)
    a, b = Predictor(params, config), Predictor(params, config)
    a.set_image(image)
    b.set_image(np.ascontiguousarray(image[..., ::-1]), image_format="BGR")
    np.testing.assert_array_equal(a.get_image_embedding(), b.get_image_embedding())


def test_one_compile_of_encoder_and_decoder_for_every_image_size():
    """Images of three sizes: the padded encoder and the decoder compile once; each
    embedding equals the encoder on the unpadded, officially preprocessed image."""
    import jax.numpy as jnp

    from jaxvrp.sam import model, predictor
    from jaxvrp.sam.transforms import preprocess

    _, params, config = official_and_params("test_small_image")
    p = Predictor(params, config)
    embeds, decodes = predictor._embed._cache_size(), predictor._decode._cache_size()
    for seed, (h, w) in enumerate([(100, 150), (90, 61), (256, 256)]):
        image = _image(seed, h, w)
        p.set_image(image)
        masks, _, _ = p.predict(point_coords=np.array([[5.0, 7.0]]), point_labels=np.array([1]))
        assert masks.shape == (3, h, w)
        resized = p.transform.apply_image(image)
        direct = model.encode_image(
            params, preprocess(jnp.asarray(resized, jnp.float32)[None], config), config=config
        )
        assert rel_l2(p.features, direct) <= 1e-6
    assert predictor._embed._cache_size() - embeds <= 1
    assert predictor._decode._cache_size() - decodes <= 1


def test_bad_input_gives_clear_errors():
    _, params, config = official_and_params("test_small_image")
    p = Predictor(params, config)
    with pytest.raises(RuntimeError, match="set_image"):
        p.predict(box=np.array([0, 0, 5, 5]))
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        p.set_image(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match="image_format"):
        p.set_image(np.zeros((10, 10, 3), np.uint8), image_format="RGBA")
    p.set_image(np.zeros((10, 12, 3), np.uint8))
    with pytest.raises(ValueError, match=r"point_coords must have shape \(\*, 2\)"):
        p.predict(point_coords=np.zeros((3,)), point_labels=np.zeros((3,)))
    with pytest.raises(ValueError, match="point_labels must be supplied"):
        p.predict(point_coords=np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"point_labels must have shape \(2\)"):
        p.predict(point_coords=np.zeros((2, 2)), point_labels=np.zeros((3,)))
    with pytest.raises(ValueError, match=r"mask_input must have shape \(1, 64, 64\)"):
        p.predict(mask_input=np.zeros((1, 256, 256)))
    with pytest.raises(ValueError, match="prompt batches differ"):
        p.predict_batch(np.zeros((2, 1, 2)), np.ones((2, 1)), boxes=np.zeros((3, 4)))
