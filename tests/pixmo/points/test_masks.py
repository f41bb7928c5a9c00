"""pixmo/points/masks.py: run-length masks decode to exactly what was encoded."""

from __future__ import annotations

import numpy as np
import pytest

from pixmo.errors import PixmoError
from pixmo.points.masks import check_masks, decode_mask, encode_mask, masks_from_arrow


def test_runs_by_hand():
    mask = np.array([[False, True, True], [True, False, False]])
    # row-major: F | T T T | F F  -> runs 1, 3, 2
    assert encode_mask(mask) == {"height": 2, "width": 3, "counts": [1, 3, 2]}
    # a mask whose first pixel is set starts with an empty False run
    assert encode_mask(~mask) == {"height": 2, "width": 3, "counts": [0, 1, 3, 2]}
    assert encode_mask(np.zeros((2, 2), bool))["counts"] == [4]
    assert encode_mask(np.ones((2, 2), bool))["counts"] == [0, 4]


@pytest.mark.parametrize("shape,density", [((1, 1), 0.5), ((7, 5), 0.5), ((48, 64), 0.02),
                                           ((48, 64), 0.98)])
def test_round_trip_is_exact(shape, density):
    mask = np.random.default_rng(sum(shape)).random(shape) < density
    rle = encode_mask(mask)
    back = decode_mask(rle)
    assert back.dtype == bool and back.shape == shape and np.array_equal(back, mask)
    assert sum(rle["counts"]) == mask.size


def test_runs_that_do_not_cover_the_mask_are_an_error():
    with pytest.raises(PixmoError, match="mask runs cover 5 pixels, not 2 x 3"):
        decode_mask({"height": 2, "width": 3, "counts": [1, 4]})
    with pytest.raises(ValueError, match="non-empty 2-D"):
        encode_mask(np.zeros((3,), bool))


def test_masks_from_arrow_match_the_numpy_encoding():
    import pyarrow as pa

    masks = [np.random.default_rng(i).random((6, 9)) < 0.4 for i in range(3)]
    column = pa.array([[m.tolist() for m in masks], None],
                      type=pa.list_(pa.list_(pa.list_(pa.bool_()))))
    assert masks_from_arrow(column[0]) == [encode_mask(m) for m in masks]
    assert masks_from_arrow(column[1]) == "masks: missing"
    encoded = masks_from_arrow(column[0])
    assert check_masks(encoded, 3, 6, 9) is None
    assert check_masks(encoded, 2, 6, 9) == "masks: 3 for 2 point(s)"
    assert check_masks(encoded, 3, 9, 6) == "masks[0]: 6 x 9, not the displayed image's 9 x 6"
