"""PerSAM and PerSAM-F against a PyTorch transcription of the official scripts
(`tests/learners/persam_reference.py`) on the PyPI SAM with PerSAM's decoder, a small random
SAM and seeded images; plus the batch mapping, degenerate inputs and the protocol."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvrp.learners import persam, registry
from jaxvrp.learners.protocol import FrozenSpec
from tests.conftest import rel_l2
from tests.learners import persam_reference as reference
from tests.sam.official import TOL

SAM = "tiny_128"  # 128-pixel input, 16x16 embedding grid, 64x64 low-res logits
SIZE = 96  # batch images: resized to 128 for SAM, logits post-processed back to 96
MAX_OBJECTS = 4  # persam_f_multi_obj.py's loop (official 10), shortened
STEPS = 50  # PerSAM-F fit: the official schedule (CosineAnnealingLR(T_max=steps)) over 50


def _batch(b=3, size=SIZE, seed=0, empty=(2,)):
    """Smooth random normalised images; reference annotations are discs (item `empty` has
    an empty one)."""
    rs = np.random.RandomState(seed)
    yy, xx = np.mgrid[:size, :size] / size
    imgs = []
    for _ in range(2 * b):
        f = rs.randn(3)
        wave = np.sin(6 * f[0] * xx + 4 * f[1] * yy + f[2])[..., None] * rs.randn(3)
        imgs.append((wave + 0.3 * rs.randn(size, size, 3)).astype(np.float32))
    imgs = np.stack(imgs).reshape(b, 2, size, size, 3)
    yy, xx = np.mgrid[:size, :size]
    ann = np.zeros((b, 1, size, size), np.float32)
    for i in range(b):
        cy, cx = rs.randint(size // 4, 3 * size // 4, 2)
        r = rs.randint(size // 6, size // 3)
        ann[i, 0] = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    for i in empty:
        ann[i] = 0
    return {"query_image": imgs[:, 0], "support_images": imgs[:, 1:], "support_annotations": ann}


@pytest.fixture(scope="module")
def setup():
    ref, params, _ = reference.official_and_params(SAM)
    batch = _batch()
    outs = {}
    runs = {
        "persam": dict(method="persam"),
        "persam_f": dict(method="persam_f", train_steps=STEPS),
        "multi": dict(method="persam_f", train_steps=STEPS, max_objects=MAX_OBJECTS),
    }
    for name, options in runs.items():
        config = persam.make_config(sam=SAM, **options)
        out = jax.jit(partial(persam.predict, config=config))(params, batch)
        outs[name] = jax.tree.map(np.asarray, out)
    return ref, params, batch, outs


@pytest.fixture(scope="module")
def persam_f_references(setup):
    """The torch PerSAM-F of items 0 and 1, with the multi-object loop (its first object is
    persam_f.py's result)."""
    ref, _, batch, _ = setup
    return [
        reference.persam_f(
            ref,
            batch["support_images"][b, 0],
            batch["support_annotations"][b, 0],
            batch["query_image"][b],
            train_epoch=STEPS,
            max_objects=MAX_OBJECTS,
        )
        for b in (0, 1)
    ]


def _assert_masks_match(logits, ref_logits):
    """Binary masks identical except where the reference logit is within 1e-4 of 0."""
    differ = (logits > 0) != (ref_logits > 0)
    assert np.all(np.abs(ref_logits[differ]) < 1e-4), f"{differ.sum()} pixels differ"
    assert 0.05 < (ref_logits > 0).mean() < 0.95  # a real mask, not all or nothing


def test_persam_matches_the_official_pipeline(setup):
    ref, _, batch, outs = setup
    out = outs["persam"]
    assert out["logits"].shape == (3, SIZE, SIZE)
    for b in (0, 1):
        ref_logits, xy, labels = reference.persam(
            ref,
            batch["support_images"][b, 0],
            batch["support_annotations"][b, 0],
            batch["query_image"][b],
        )
        np.testing.assert_array_equal(out["points"][b], xy)  # positive and negative points
        np.testing.assert_array_equal(out["point_labels"][b], labels)
        _assert_masks_match(out["logits"][b], ref_logits)
        assert rel_l2(out["logits"][b], ref_logits) <= TOL


def test_persam_f_weights_and_masks_match_the_official_fit(setup, persam_f_references):
    _, _, _, outs = setup
    out = outs["persam_f"]
    assert out["fit_losses"].shape == (STEPS, 3)
    for b, r in enumerate(persam_f_references):
        assert np.abs(out["mask_weights"][b] - r["weights"]).max() <= 1e-4
        assert np.abs(r["weights"] - 1 / 3).max() > 1e-3  # the fit moved the weights
        np.testing.assert_allclose(out["mask_weights"][b].sum(), 1.0, atol=1e-6)
        np.testing.assert_array_equal(out["points"][b], r["points"])
        np.testing.assert_array_equal(out["point_labels"][b], r["labels"])
        _assert_masks_match(out["logits"][b], r["logits"])
        assert rel_l2(out["logits"][b], r["logits"]) <= TOL
        assert out["fit_losses"][-1, b] < out["fit_losses"][0, b]


def test_persam_f_multi_object_loop_matches_the_official(setup, persam_f_references):
    """persam_f_multi_obj.py's test loop: the union of the objects found before the first
    duplicate (IoU >= 0.8), each found object blacked out and the image re-encoded."""
    _, _, _, outs = setup
    out, single = outs["multi"], outs["persam_f"]
    for b, r in enumerate(persam_f_references):
        assert out["num_objects"][b] == r["objects"]
        np.testing.assert_array_equal(out["points"][b], r["points"])
        _assert_masks_match(out["logits"][b], r["union"])
        # the union contains the single-object mask
        assert np.all(out["logits"][b][single["logits"][b] > 0] > 0)
    assert max(r["objects"] for r in persam_f_references) > 1  # more than one object found


def test_empty_reference_gives_an_empty_mask(setup):
    """Item 2's reference annotation is empty (the official code would take the mean of no
    features, NaN): its logits are EMPTY_LOGIT everywhere and it is marked invalid; the other
    items are what they are on their own."""
    _, params, batch, outs = setup
    for out in outs.values():
        np.testing.assert_array_equal(out["valid"], [True, True, False])
        assert np.all(out["logits"][2] == persam.EMPTY_LOGIT)
        assert np.isfinite(out["logits"]).all()


def test_reference_mask_is_the_preprocessed_red_channel():
    """PerSeg's red 128 normalises to (128 - 123.675) / 58.395 > 0: after the bilinear resize
    a cell counts only when nearly all of it is foreground; a mask value of 255 keeps cells
    about half covered."""
    config = persam.make_config(sam=SAM)
    ann = np.zeros((1, 128, 128), np.float32)
    ann[:, :, :68] = 1  # columns 0..67: cells of 8 pixels, cell 8 is half covered
    cells = np.asarray(persam.reference_mask(jnp.asarray(ann), config))
    assert cells.shape == (1, 16, 16)
    np.testing.assert_array_equal(cells[0].any(axis=0), np.arange(16) < 8)
    loose = persam.make_config(sam=SAM, mask_value=255.0)
    cells = np.asarray(persam.reference_mask(jnp.asarray(ann), loose))
    np.testing.assert_array_equal(cells[0].any(axis=0), np.arange(16) < 9)


def test_target_embedding_and_shot_merge():
    rs = np.random.RandomState(0)
    feats = rs.randn(2, 4, 4, 5).astype(np.float32)
    mask = np.zeros((2, 4, 4), bool)
    mask[0, 1:3, 1:3] = True
    t, valid = persam.target_embedding(jnp.asarray(feats), jnp.asarray(mask), "persam")
    np.testing.assert_allclose(t[0], feats[0][mask[0]].mean(0), rtol=1e-6)
    np.testing.assert_array_equal(valid, [True, False])
    np.testing.assert_array_equal(t[1], 0)
    tf, _ = persam.target_embedding(jnp.asarray(feats), jnp.asarray(mask), "persam_f")
    sel = feats[0][mask[0]]
    np.testing.assert_allclose(tf[0], sel.max(0) / 2 + sel.mean(0) / 2, rtol=1e-6)
    # K shots: the mean over the valid ones; no valid shot: invalid
    shots = jnp.asarray(rs.randn(2, 3, 5).astype(np.float32))
    ok = jnp.asarray([[True, False, True], [False, False, False]])
    merged, any_valid = persam.merge_shots(shots, ok)
    np.testing.assert_allclose(merged[0], (shots[0, 0] + shots[0, 2]) / 2, rtol=1e-6)
    np.testing.assert_array_equal(any_valid, [True, False])


def test_refinement_stops_at_an_empty_mask(monkeypatch):
    """A refinement that needs the box of an empty mask keeps the previous logits (the
    official `x.min()` of an empty array would raise); a non-empty one takes the new pass.
    SAM is replaced by a stub whose 3 outputs are constants, the best (IoU) being +2."""

    def fake_decode(sam_params, emb, points, labels, out_size, config, **kw):
        n = emb.shape[0]
        levels = jnp.array([1.0, 2.0, 3.0])
        iou = jnp.broadcast_to(jnp.array([0.1, 0.9, 0.5]), (n, 3))
        low = jnp.broadcast_to(levels[None, :, None, None], (n, 3, 8, 8))
        high = jnp.broadcast_to(levels[None, :, None, None], (n, 3, *out_size))
        return low, iou, high

    monkeypatch.setattr(persam, "_decode", fake_decode)
    config = persam.make_config(sam=SAM)
    emb = jnp.zeros((2, 4, 4, 8))
    points, labels = jnp.zeros((2, 1, 2)), jnp.ones((2, 1), jnp.int32)
    low = jnp.zeros((2, 8, 8))
    high = jnp.stack([-jnp.ones((10, 12)), jnp.ones((10, 12))])  # item 0: empty mask
    for box_first in (True, False):
        out = persam._refine(
            {}, emb, points, labels, low, high, (10, 12), config, passes=2, box_first=box_first
        )
        # item 0: with box_first its first pass needs a box and stops at once; without,
        # the first pass (no box) runs and gives +2, whose box is then fine
        np.testing.assert_array_equal(out[0], -1.0 if box_first else 2.0)
        np.testing.assert_array_equal(out[1], 2.0)
    np.testing.assert_array_equal(
        persam._box(jnp.asarray(np.pad(np.ones((2, 3)), ((1, 7), (4, 5))))[None])[0],
        [[4, 1, 6, 2]],  # inclusive (x0, y0, x1, y1), as np.nonzero's min / max
    )


def test_configs_and_registration():
    learner, learner_f = registry.get("persam"), registry.get("persam_f")
    assert registry.BUILTIN["persam"] == registry.BUILTIN["persam_f"] == persam.__name__
    for lr, method in ((learner, "persam"), (learner_f, "persam_f")):
        config = lr.make_config(sam=SAM)
        assert config.method == method and not lr.trainable
        assert lr.init(jax.random.key(0), config) == {}
        assert lr.frozen(config) == FrozenSpec(sam=config.sam, backbone=None)
    assert persam.make_config().sam.encoder_embed_dim == 1280  # official: ViT-H
    assert persam.make_config_f().train_steps == 1000
    with pytest.raises(TypeError):
        persam.make_config(sam=SAM, unknown=1)
    with pytest.raises(ValueError, match="mask_value"):
        persam.make_config(sam=SAM, mask_value=100.0)
    with pytest.raises(ValueError, match="PerSAM options"):
        persam.make_config_f(sam=SAM, negative_point=False)
    with pytest.raises(ValueError, match="max_objects"):
        persam.make_config(sam=SAM, max_objects=3)
    with pytest.raises(ValueError, match="refinement"):
        persam.make_config(sam=SAM, refinement=3)
    with pytest.raises(ValueError, match="support_annotations"):
        batch = _batch(b=1, size=32, empty=())
        batch["support_annotations"] = batch["support_annotations"][:, :, :16]
        persam.predict({}, batch, persam.make_config(sam=SAM))


def test_config_file_makes_both_learners():
    from configs import persam as persam_config

    for arg, name in (("runlocal", "persam"), ("persam_f,runlocal", "persam_f"), (None, "persam")):
        c = persam_config.get_config(arg)
        assert c.learner == name
        config = registry.get(name).make_config(**c.model)
        assert config.method == name
    assert persam_config.get_config("persam_f").model.train_steps == 1000
    with pytest.raises(ValueError, match="unknown config arg"):
        persam_config.get_config("backbone=vgg16_bn")
