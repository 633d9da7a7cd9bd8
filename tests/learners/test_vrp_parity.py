"""`jaxvrp.learners.vrp.apply` end to end against the PyTorch reference of the official
VRP-SAM forward (`tests/learners/vrp_reference.py`), on the same random weights converted
with `conversion.vrp_sam`: backbone, feature augmenter, prompt generator, SAM."""

import functools

import jax
import numpy as np
import pytest
import torch

from conversion import vrp_sam
from jaxvrp import backbones
from jaxvrp.learners import vrp
from tests.backbones import torch_reference as ref
from tests.conftest import rel_l2
from tests.learners import vrp_reference
from tests.learners.common import make_batch
from tests.sam.official import TOL, official_and_params

BACKBONE, SAM = "resnet_test_deepstem", "test_small_image"


@functools.cache
def models(num_layers: int, seed: int = 0):
    """(torch VRP encoder, torch SAM_pred, jax learner params, jax frozen params, config)."""
    config = vrp.make_config(BACKBONE, SAM, num_layers=num_layers)
    torch.manual_seed(seed)
    resnet = ref.resnet(backbones.get_config(BACKBONE), seed=seed)
    feats = resnet.layer2[-1].conv3.out_channels + resnet.layer3[-1].conv3.out_channels
    encoder = vrp_reference.VRPEncoder(resnet, feats, config.hidden_dim, num_layers)
    vrp_reference.randomize_(encoder.transformer_decoder, seed + 1).eval()
    encoder.eval()
    sam, sam_params, _ = official_and_params(SAM, seed)
    sd = {k: v.detach().numpy() for k, v in encoder.state_dict().items()}
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    params = vrp_sam.convert_vrp_sam_state_dict(sd, config, BACKBONE)
    frozen = {"sam": sam_params, "backbone": params["backbone"]}
    return encoder, vrp_reference.SAMPred(sam), params["learner"], frozen, config


def torch_logits(encoder, sam, batch) -> np.ndarray:
    t = lambda x: torch.from_numpy(np.asarray(x))
    with torch.no_grad():
        out = vrp_reference.predict_nshot(
            encoder,
            sam,
            t(batch["query_image"]).permute(0, 3, 1, 2),
            t(batch["support_images"]).permute(0, 1, 4, 2, 3),
            t(batch["support_annotations"]),
        )
    return out[:, 0].numpy()


@pytest.mark.parametrize("num_layers,shots,batch", [(1, 1, 2), (1, 2, 1), (2, 2, 1)])
def test_apply_matches_the_official_forward(num_layers, shots, batch):
    encoder, sam, params, frozen, config = models(num_layers)
    data = make_batch(b=batch, k=shots, size=64, seed=10 * num_layers + shots)
    want = torch_logits(encoder, sam, data)
    got = jax.jit(functools.partial(vrp.apply, config=config))(params, frozen, data)
    assert got.shape == want.shape == (batch, 64, 64)
    assert np.std(want) > 0.01  # not a constant map
    err = rel_l2(got, want)
    print(f"VRP-SAM layers={num_layers} shots={shots} batch={batch}: rel L2 {err:.2e}")
    assert err <= TOL


def test_several_layers_restart_from_the_learned_queries():
    """With two layers the output is layer 1 applied to the learned queries: changing
    layer 0's weights changes nothing (official `transformer_decoder.forward`)."""
    _, _, params, frozen, config = models(2)
    data = make_batch(b=1, k=1, size=64, seed=3)
    fn = jax.jit(functools.partial(vrp.apply, config=config))
    apply = lambda p: fn(p, frozen, data)
    base = apply(params)
    td = dict(params["transformer_decoder"])
    first = [
        f"transformer_{kind}_attention_layers{s}"
        for kind in ("cross", "self")
        for s in ("_0_0", "_0")
    ]
    for name in first:
        td[name] = jax.tree.map(lambda x: x + 1.0, td[name])
    changed_first = apply({**params, "transformer_decoder": td})
    np.testing.assert_array_equal(base, changed_first)
    td = dict(params["transformer_decoder"])
    td["transformer_self_attention_layers_1"] = jax.tree.map(
        lambda x: x + 1.0, td["transformer_self_attention_layers_1"]
    )
    changed_last = apply({**params, "transformer_decoder": td})
    assert not np.allclose(base, changed_last)
