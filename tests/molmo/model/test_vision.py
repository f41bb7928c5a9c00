"""The CLIP ViT: features of the official fixture, the chosen layers concatenated in order with
the CLS token dropped, and blocks past the deepest chosen layer never run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from molmo.model.config import VisionConfig
from molmo.model.vision import VisionTransformer, quick_gelu
from molmo.model.weights import from_pretrained
from tests.paths import OFFICIAL_TINY

CFG = VisionConfig(width=8, heads=2, head_dim=4, layers=4, mlp_hidden=16, image_size=28,
                   feature_layers=(-1, 1))  # a 2x2 grid of 14 px patches


def _vit() -> VisionTransformer:
    torch.manual_seed(0)
    vit = VisionTransformer(CFG)
    with torch.no_grad():
        for p in vit.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return vit.eval()


@pytest.mark.parametrize("example", ["ex_480x640", "ex_100x300"])
def test_features_match_the_official_vit(example: str) -> None:
    vit = from_pretrained(OFFICIAL_TINY).vision
    images = torch.from_numpy(np.load(OFFICIAL_TINY / example / "images.npy"))
    with torch.no_grad():
        features = vit(images).numpy()
    # Measured <= 4.8e-6.
    np.testing.assert_allclose(features, np.load(OFFICIAL_TINY / example / "vit_features.npy"),
                               atol=2e-5, rtol=1e-5)


def test_chosen_layers_are_concatenated_in_order_without_cls() -> None:
    vit = _vit()
    patches = torch.randn(3, 4, CFG.patch_dim)
    seen: list[torch.Tensor] = []
    hooks = [b.register_forward_hook(lambda _m, _i, out: seen.append(out)) for b in vit.blocks]
    with torch.no_grad():
        features = vit(patches)
    for hook in hooks:
        hook.remove()
    assert features.shape == (3, 4, 2 * CFG.width)
    assert len(seen) == 4  # the deepest chosen layer is the last block
    torch.testing.assert_close(features[..., :8], seen[3][:, 1:])  # layer -1 first
    torch.testing.assert_close(features[..., 8:], seen[1][:, 1:])


def test_blocks_after_the_deepest_layer_do_not_run() -> None:
    shallow = VisionConfig(width=8, heads=2, head_dim=4, layers=4, mlp_hidden=16,
                           image_size=28, feature_layers=(1,))
    vit = VisionTransformer(shallow)
    ran: list[int] = []
    for i, block in enumerate(vit.blocks):
        block.register_forward_hook(lambda _m, _i, _o, i=i: ran.append(i))
    with torch.no_grad():
        torch.nn.init.normal_(vit.class_embed)
        torch.nn.init.normal_(vit.pos_embed)
        vit(torch.randn(1, 4, shallow.patch_dim))
    assert ran == [0, 1]
    with pytest.raises(ValueError, match="expected 4 patches per crop, got 5"):
        vit(torch.randn(1, 5, shallow.patch_dim))


def test_quick_gelu_is_x_sigmoid_1702x() -> None:
    x = torch.tensor([-2.0, 0.0, 1.0])
    torch.testing.assert_close(quick_gelu(x), x * torch.sigmoid(1.702 * x))
    assert float(quick_gelu(torch.tensor(10.0))) == pytest.approx(10.0, abs=1e-6)
