"""Bad or unusual input files, surveyed (the table in docs/segment.md): each is handled
correctly or refused with an error naming the file, never a wrong result or a half-written
output. `jaxvrp segment` here; the dataset builders' rows are in tests/data/test_builders.py."""

import io

import numpy as np
import pytest
from PIL import Image

from jaxvrp import segment as seg
from jaxvrp.image import binary_mask, rgb8

S = 32


def _ref_mask(tmp_path, array, name="m.png", **save):
    path = tmp_path / name
    Image.fromarray(array).save(path, **save)
    return path


def test_color_modes_read_as_they_look(tmp_path):
    rs = np.random.RandomState(0)
    rgb = rs.randint(0, 256, (12, 10, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(seg.read_rgb(tmp_path / "rgb.png", "--reference"), rgb)
    gray = rgb[..., 0]
    Image.fromarray(gray).save(tmp_path / "gray.png")
    np.testing.assert_array_equal(
        seg.read_rgb(tmp_path / "gray.png", "--reference"), np.repeat(gray[..., None], 3, -1)
    )
    rgba = np.concatenate([rgb, rs.randint(0, 256, (12, 10, 1)).astype(np.uint8)], -1)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")  # alpha dropped, colours kept
    np.testing.assert_array_equal(seg.read_rgb(tmp_path / "rgba.png", "--reference"), rgb)
    pal = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16)
    pal.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(
        seg.read_rgb(tmp_path / "pal.png", "--reference"), np.asarray(pal.convert("RGB"))
    )


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    ramp = (np.arange(16 * 16).reshape(16, 16) * 256).astype(np.uint16)  # 0 .. 65280
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode.startswith("I")
    got = seg.read_rgb(tmp_path / "deep.png", "--reference")
    np.testing.assert_array_equal(got[..., 1], (ramp >> 8).astype(np.uint8))  # 0 .. 255
    assert len(np.unique(got)) == 256  # PIL's own convert("RGB") would clip most to 255
    with pytest.raises(ValueError, match="float"):
        rgb8(Image.fromarray(ramp.astype(np.float32)))


def test_masks_of_every_mode_give_the_visible_foreground(tmp_path):
    truth = np.zeros((9, 11), bool)
    truth[2:6, 3:9] = True
    cases = {
        "L": truth.astype(np.uint8) * 255,
        "L low": truth.astype(np.uint8),  # 0 / 1 masks are common too
        "16-bit": truth.astype(np.uint16) * 1000,
        "RGB": np.stack([truth * 0, truth * 0, truth * 200], -1).astype(np.uint8),
    }
    for name, array in cases.items():
        path = _ref_mask(tmp_path, array, f"{name}.png")
        with Image.open(path) as im:
            np.testing.assert_array_equal(binary_mask(im), truth, err_msg=name)
    # a palette mask is read by colour: index 0 may well be the object's colour
    pal = Image.fromarray(np.where(truth, 0, 1).astype(np.uint8), mode="P")
    pal.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)  # 0 = white object, 1 = black
    pal.save(tmp_path / "pal.png")
    with Image.open(tmp_path / "pal.png") as im:
        np.testing.assert_array_equal(binary_mask(im), truth)
    # RGBA: a transparent pixel is background whatever its colour
    rgba = np.zeros((9, 11, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[..., 3] = truth * 255
    with Image.open(_ref_mask(tmp_path, rgba, "rgba.png")) as im:
        np.testing.assert_array_equal(binary_mask(im), truth)


def test_exif_rotated_jpeg_is_read_as_displayed(tmp_path):
    stored = np.zeros((20, 30, 3), np.uint8)
    stored[:, :10] = 255  # a white left third as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(stored).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=100)
    shown = seg.read_rgb(tmp_path / "r.jpg", "--reference")
    assert shown.shape == (30, 20, 3)  # displayed: portrait
    assert shown[:10].mean() > 200 and shown[20:].mean() < 50  # the white third on top
    # a mask drawn on the displayed image fits; one of the stored size is refused by name
    good = _ref_mask(tmp_path, np.pad(np.full((10, 20), 255, np.uint8), ((0, 20), (0, 0))))
    ann = seg.annotation_map(seg.Shot(tmp_path / "r.jpg", "mask", good), (30, 20), S)
    assert ann[: S // 3].mean() > 0.9 and ann[S // 2 :].sum() == 0
    wrong = _ref_mask(tmp_path, np.full((20, 30), 255, np.uint8), "stored.png")
    with pytest.raises(seg.SegmentError, match="stored.png is 30x20 but its reference"):
        seg.annotation_map(seg.Shot(tmp_path / "r.jpg", "mask", wrong), (30, 20), S)


@pytest.mark.parametrize("kind", ["truncated", "corrupt", "empty file", "huge"])
def test_unreadable_files_are_refused_naming_them(tmp_path, kind, monkeypatch):
    buf = io.BytesIO()
    Image.fromarray(np.random.RandomState(1).randint(0, 256, (64, 64, 3), np.uint8)).save(
        buf, format="PNG"
    )
    data = buf.getvalue()
    path = tmp_path / "bad.png"
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "corrupt":
        path.write_bytes(data[:40] + bytes(200) + data[240:])
    elif kind == "empty file":
        path.write_bytes(b"")
    else:  # more pixels than Pillow's decompression-bomb limit (lowered for the test)
        path.write_bytes(data)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 // 4)
    with pytest.raises(seg.SegmentError, match=r"--targets: cannot read .*bad\.png"):
        seg.read_rgb(path, "--targets")


def test_empty_and_missized_masks_are_refused(tmp_path):
    empty = _ref_mask(tmp_path, np.zeros((8, 8), np.uint8), "empty.png")
    with pytest.raises(seg.SegmentError, match="empty.png is empty"):
        seg.annotation_map(seg.Shot("r.png", "mask", empty), (8, 8), S)
    tiny = np.zeros((400, 400), np.uint8)
    tiny[5, 5] = 255  # one pixel: nearest resizing to 32 x 32 loses it, like training would
    path = _ref_mask(tmp_path, tiny, "tiny.png")
    with pytest.raises(seg.SegmentError, match="no foreground pixel left"):
        seg.annotation_map(seg.Shot("r.png", "mask", path), (400, 400), S)
    scribble = seg.annotation_map(seg.Shot("r.png", "scribble", path), (400, 400), S)
    assert scribble.sum() == 1  # a scribble is any-pooled: the stroke survives
    with pytest.raises(seg.SegmentError, match="tiny.png is 400x400 but its reference"):
        seg.annotation_map(seg.Shot("r.png", "mask", path), (300, 400), S)
