"""Image encoder parity with the official PyTorch `ImageEncoderViT`."""

from functools import partial

import jax
import numpy as np
import pytest
import torch
from jax.sharding import NamedSharding, PartitionSpec

from jaxvrp.sam import encode_image
from jaxvrp.sam.image_encoder import window_partition, window_unpartition
from tests.conftest import rel_l2
from tests.sam.official import TOL, official_and_params


def _official_encode(ref, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = ref.image_encoder(torch.from_numpy(images).permute(0, 3, 1, 2))
    return out.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("variant", ["test_tiny", "test_small_image"])
def test_encoder_matches_official_small(variant):
    ref, params, config = official_and_params(variant)
    s = config.image_size
    images = np.random.RandomState(1).randn(2, s, s, 3).astype(np.float32)
    expected = _official_encode(ref, images)
    actual = jax.jit(partial(encode_image, config=config))(params, images)
    assert actual.shape == (
        2,
        config.embedding_size,
        config.embedding_size,
        256 if variant == "test_tiny" else 64,
    )
    assert rel_l2(actual, expected) <= TOL


def test_encoder_matches_official_vit_b_full_size():
    ref, params, config = official_and_params("vit_b")
    images = np.random.RandomState(2).randn(1, 1024, 1024, 3).astype(np.float32)
    expected = _official_encode(ref, images)
    actual = jax.jit(partial(encode_image, config=config))(params, images)
    assert actual.shape == (1, 64, 64, 256)
    assert rel_l2(actual, expected) <= TOL


def test_encoder_jitted_over_numpy_params_closed_over():
    # params as the loaders give them (numpy), captured by the jitted function, not passed
    _, params, config = official_and_params("test_small_image")
    host = jax.tree.map(np.asarray, params)
    s = config.image_size
    images = np.random.RandomState(4).randn(1, s, s, 3).astype(np.float32)
    closed = jax.jit(lambda x: encode_image(host, x, config=config))(images)
    passed = jax.jit(partial(encode_image, config=config))(params, images)
    np.testing.assert_allclose(closed, passed, rtol=1e-5, atol=1e-6)


def test_window_partition_pads_and_round_trips():
    x = np.random.RandomState(0).randn(2, 64, 64, 3).astype(np.float32)
    windows, pad_hw = window_partition(x, 14)
    assert pad_hw == (70, 70) and windows.shape == (2 * 25, 14, 14, 3)
    # the last window row holds 8 real rows and 6 zero rows of padding
    assert np.all(np.asarray(windows[4])[:, 8:] == 0) and np.any(np.asarray(windows[4])[:, :8])
    np.testing.assert_array_equal(window_unpartition(windows, 14, pad_hw, (64, 64)), x)


def test_encoder_sharded_over_8_devices_equals_one_device(devices):
    _, params, config = official_and_params("test_small_image")
    s = config.image_size
    images = np.random.RandomState(3).randn(8, s, s, 3).astype(np.float32)
    fn = jax.jit(partial(encode_image, config=config))
    single = fn(params, images)
    # Auto axes: the compiler propagates the batch sharding through the model (GSPMD).
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)
    sharded_images = jax.device_put(images, NamedSharding(mesh, PartitionSpec("data")))
    replicated = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
    sharded = fn(replicated, sharded_images)
    assert len(sharded.sharding.device_set) == 8
    assert rel_l2(sharded, single) <= 1e-6
