"""The connector: 2x2 windows of ViT features pooled by attention, projected to the LLM width,
with the padding embeddings added where crops are padding."""

from __future__ import annotations

import torch

from molmo.model.config import ConnectorConfig, VisionConfig
from molmo.model.connector import AttentionPool, Connector

VISION = VisionConfig(width=8, heads=2, head_dim=4, layers=2, mlp_hidden=16, image_size=56,
                      feature_layers=(-1,))  # a 4x4 grid of patches
CFG = ConnectorConfig(pool_heads=2, pool_head_dim=4, projector_hidden=12)


def _connector() -> Connector:
    torch.manual_seed(0)
    connector = Connector(VISION, CFG, d_model=6)
    with torch.no_grad():
        for p in connector.parameters():
            p.copy_(torch.randn_like(p))
    return connector.eval()


def test_output_shape_is_one_token_per_2x2_window() -> None:
    features = torch.randn(2, 3, 16, 8)  # [B, crops, 4x4 patches, feature_dim]
    out = _connector()(features, image_masks=None)
    assert out.shape == (2, 3, 4, 6)  # [B, crops, 2x2 pooled tokens, d_model]


def test_pooled_token_k_sees_exactly_its_2x2_window() -> None:
    connector = _connector()
    features = torch.randn(1, 1, 16, 8)
    with torch.no_grad():
        out = connector(features, image_masks=None)[0, 0]
        grid = features[0, 0].view(4, 4, 8)
        for k, (r, c) in enumerate([(0, 0), (0, 2), (2, 0), (2, 2)]):  # raster order
            window = grid[r:r + 2, c:c + 2].reshape(1, 4, 8)  # (dh, dw) row-major inside
            expected = connector.projector(connector.pool(window))[0]
            torch.testing.assert_close(out[k], expected, atol=1e-5, rtol=1e-5)
        # Changing one patch changes only the token of its window.
        changed = features.clone()
        changed[0, 0, 5] += 1.0  # row 1, column 1: window 0
        moved = (connector(changed, image_masks=None)[0, 0] - out).abs().amax(-1)
    assert moved[0] > 0 and (moved[1:] == 0).all()


def test_attention_pool_query_is_the_window_mean() -> None:
    torch.manual_seed(1)
    pool = AttentionPool(8, CFG)
    windows = torch.randn(3, 4, 8)
    shuffled = windows[:, [3, 1, 0, 2]]
    with torch.no_grad():  # one query, softmax over the window: order inside does not matter
        torch.testing.assert_close(pool(windows), pool(shuffled), atol=1e-6, rtol=1e-5)


def test_padding_embeddings_mark_all_and_partly_padded_patches() -> None:
    connector = _connector()
    features = torch.zeros(1, 1, 16, 8)
    masks = torch.ones(1, 1, 16)
    masks[0, 0, 0] = 0.0  # all padding: row 0 of pad_embed
    masks[0, 0, 2] = 0.5  # partly padding: row 1
    with torch.no_grad():
        plain = connector(features, image_masks=None)
        padded = connector(features, image_masks=masks)
        expected_features = features.clone()
        expected_features[0, 0, 0] += connector.pad_embed[0]
        expected_features[0, 0, 2] += connector.pad_embed[1]
        torch.testing.assert_close(padded, connector(expected_features, image_masks=None))
    assert not torch.equal(plain[0, 0, :2], padded[0, 0, :2])
    torch.testing.assert_close(plain[0, 0, 2:], padded[0, 0, 2:])  # windows 2, 3 untouched
