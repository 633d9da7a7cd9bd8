"""The SAM converter: round trip through the CLI, variant inference, strict refusal."""

import hashlib
import json

import numpy as np
import pytest
import torch
from flax import traverse_util

from conversion import sam as sam_conversion
from conversion.common import TRANSFORMS, torch_key
from conversion.official import build_official_sam
from jaxvrp import params_io
from jaxvrp.sam import Predictor, get_config, param_shapes
from tests.sam.official import official_and_params


@pytest.fixture(scope="module")
def state_dict():
    ref, _, _ = official_and_params("test_tiny")
    return {k: v.clone() for k, v in ref.state_dict().items()}


def _save(tmp_path, sd, name="sam_tiny.pth"):
    path = tmp_path / name
    torch.save(sd, path)
    return path


def _assert_refused(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    code = sam_conversion.main([*argv, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err, err
    assert not out.exists()
    # nothing half-written next to it either
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial")]
    return err


def test_round_trip_through_the_cli(tmp_path, state_dict, capsys):
    src = _save(tmp_path, state_dict)
    out = tmp_path / "ckpt"
    assert sam_conversion.main(["--checkpoint", str(src), "--out", str(out)]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["kind"] == "sam" and meta["variant"] == "test_tiny"  # inferred from shapes
    assert meta["source_file"] == "sam_tiny.pth"
    assert meta["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    params, _ = params_io.load_params(out, expected_kind="sam")
    _, expected, _ = official_and_params("test_tiny")
    flat, flat_expected = (traverse_util.flatten_dict(t) for t in (params, expected))
    assert flat.keys() == flat_expected.keys()
    for k in flat:
        np.testing.assert_array_equal(flat[k], flat_expected[k])
    # the usual consumer loads it
    predictor = Predictor.from_checkpoint(out)
    predictor.set_image(np.zeros((32, 48, 3), np.uint8))
    masks, iou, _ = predictor.predict(box=np.array([1, 2, 30, 20]))
    assert masks.shape == (3, 32, 48) and iou.shape == (3,)


def test_explicit_matching_variant_is_accepted(tmp_path, state_dict):
    src = _save(tmp_path, state_dict)
    out = sam_conversion.convert(src, tmp_path / "o", "test_tiny")
    assert params_io.load_metadata(out)["variant"] == "test_tiny"


def test_wrong_variant(tmp_path, state_dict, capsys):
    src = _save(tmp_path, state_dict)
    _assert_refused(
        tmp_path,
        capsys,
        ["--checkpoint", str(src), "--variant", "vit_b"],
        "--variant vit_b does not fit sam_tiny.pth",
    )


def test_truncated_file(tmp_path, state_dict, capsys):
    src = _save(tmp_path, state_dict)
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 2])
    _assert_refused(tmp_path, capsys, ["--checkpoint", str(src)], "cannot read checkpoint")


def test_missing_file(tmp_path, capsys):
    _assert_refused(
        tmp_path, capsys, ["--checkpoint", str(tmp_path / "nope.pth")], "checkpoint file not found"
    )


def test_missing_key(tmp_path, state_dict, capsys):
    sd = dict(state_dict)
    del sd["mask_decoder.iou_token.weight"]
    err = _assert_refused(
        tmp_path, capsys, ["--checkpoint", str(_save(tmp_path, sd))], "missing keys (1)"
    )
    assert "mask_decoder.iou_token.weight" in err


def test_extra_key(tmp_path, state_dict, capsys):
    sd = {**state_dict, "image_encoder.extra.weight": torch.zeros(3)}
    err = _assert_refused(
        tmp_path, capsys, ["--checkpoint", str(_save(tmp_path, sd))], "unexpected keys (1)"
    )
    assert "image_encoder.extra.weight" in err


def test_wrong_shape(tmp_path, state_dict, capsys):
    sd = {**state_dict, "image_encoder.blocks.0.attn.qkv.weight": torch.zeros(96, 31)}
    err = _assert_refused(
        tmp_path, capsys, ["--checkpoint", str(_save(tmp_path, sd))], "shape mismatches (1)"
    )
    assert "image_encoder.blocks.0.attn.qkv.weight: source (96, 31)" in err


def test_nested_training_checkpoint_is_refused(tmp_path, state_dict, capsys):
    src = _save(tmp_path, {"model": state_dict, "epoch": torch.tensor(3)})
    _assert_refused(tmp_path, capsys, ["--checkpoint", str(src)], "not a flat state dict")


def test_existing_output_is_not_overwritten(tmp_path, state_dict, capsys):
    src = _save(tmp_path, state_dict)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code = sam_conversion.main(["--checkpoint", str(src), "--out", str(out)])
    assert code == 2 and "already exists" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    assert sam_conversion.main(["--checkpoint", str(src), "--out", str(out), "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / "metadata.json").is_file()


@pytest.mark.parametrize("variant", ["vit_b", "vit_l", "vit_h"])
def test_full_size_key_map_and_shapes(variant):
    """Every official key of the full-size models maps onto exactly one of our parameters with
    the right shape after its layout transform (built on the meta device: no memory)."""
    config = get_config(variant)
    with torch.device("meta"):
        official = {k: tuple(v.shape) for k, v in build_official_sam(config).state_dict().items()}
    ours = traverse_util.flatten_dict(param_shapes(config))
    assert sorted(torch_key(p) for p in ours) == sorted(official)
    for path, leaf in ours.items():
        key = torch_key(path)
        moved = TRANSFORMS[sam_conversion.transform_of(key)](np.broadcast_to(0.0, official[key]))
        assert moved.shape == leaf.shape, key


def test_jaxvrp_convert_is_the_same_converter(tmp_path, state_dict, capsys):
    """`jaxvrp convert sam` (installed users) writes what `python -m conversion.sam` writes,
    and refuses bad input the same way."""
    from jaxvrp import cli

    src = _save(tmp_path, state_dict)
    assert cli.main(["convert", "sam", "--checkpoint", str(src), "--out", str(tmp_path / "a")]) == 0
    assert sam_conversion.main(["--checkpoint", str(src), "--out", str(tmp_path / "b")]) == 0
    a, meta_a = params_io.load_params(tmp_path / "a", expected_kind="sam")
    b, meta_b = params_io.load_params(tmp_path / "b", expected_kind="sam")
    assert meta_a == meta_b
    for k, v in traverse_util.flatten_dict(a).items():
        np.testing.assert_array_equal(v, traverse_util.flatten_dict(b)[k])
    capsys.readouterr()
    assert cli.main(["convert", "sam", "--help"]) == 0
    assert "usage: jaxvrp convert sam" in capsys.readouterr().out
    assert cli.main(["convert", "nope"]) == 2
    assert "unknown kind 'nope'" in capsys.readouterr().err
    bad = _save(tmp_path, {k: v for k, v in state_dict.items() if "neck" not in k}, "bad.pth")
    out = tmp_path / "c"
    assert cli.main(["convert", "sam", "--checkpoint", str(bad), "--out", str(out)]) == 2
    assert "neck" in capsys.readouterr().err and not out.exists()
