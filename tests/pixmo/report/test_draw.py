"""Drawing points on an image for ``pixmo show``."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from pixmo.errors import PixmoError
from pixmo.report.draw import PALETTE, render_points


def png_bytes(width: int, height: int, orientation: int = 1) -> bytes:
    img = Image.new("RGB", (width, height), (128, 128, 128))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format="PNG", exif=exif.tobytes())
    return buf.getvalue()


SETS = [
    {"label": "cat", "points": [[25.0, 50.0], [75.0, 50.0]], "count": 2,
     "collection_method": "pointing", "annotators": ["a1"]},
    {"label": "dog", "points": [[50.0, 20.0]], "count": 1,
     "collection_method": "pointing", "annotators": ["a1"]},
    {"label": "unicorn", "points": [], "count": 0,
     "collection_method": "pointing", "annotators": ["a1"]},
]


def test_points_are_drawn_in_label_colours_with_a_legend(tmp_path):
    out = render_points(png_bytes(400, 200), SETS, tmp_path / "show" / "s.png")
    assert out == tmp_path / "show" / "s.png"
    assert [p.name for p in out.parent.iterdir()] == ["s.png"]  # no temporary left behind
    img = Image.open(out)
    assert img.format == "PNG"
    width, height = img.size
    assert width > 400 and height == 200  # a legend panel to the right of the image
    img = img.convert("RGB")
    assert img.getpixel((100, 100)) == PALETTE[0]  # cat points
    assert img.getpixel((300, 100)) == PALETTE[0]
    assert img.getpixel((200, 40)) == PALETTE[1]  # dog point
    assert img.getpixel((150, 150)) == (128, 128, 128)  # untouched image elsewhere
    legend = [img.getpixel((x, y)) for x in range(400, width) for y in range(height)]
    for colour in PALETTE[:3]:  # a swatch per label, the not-present one included
        assert legend.count(colour) > 20


def test_points_are_numbered_in_molmo_order(tmp_path):
    # the number label sits right of its point: the left point is 1, drawn before 2
    plain = Image.open(render_points(png_bytes(400, 200), SETS[:1], tmp_path / "a.png"))
    one_point = [dict(SETS[0], points=[[25.0, 50.0]])]
    single = Image.open(render_points(png_bytes(400, 200), one_point, tmp_path / "b.png"))
    # the text next to the left point is identical whether or not the right point exists,
    # and differs from the text next to the right point ("1" vs "2")
    box_left, box_right = (106, 88, 126, 110), (306, 88, 326, 110)
    assert plain.crop(box_left).tobytes() == single.crop(box_left).tobytes()
    assert plain.crop(box_left).tobytes() != plain.crop(box_right).tobytes()


def test_exif_rotated_image_is_drawn_as_displayed(tmp_path):
    # stored 200x400 with orientation 6 displays as 400x200
    out = render_points(png_bytes(200, 400, orientation=6), SETS[1:2], tmp_path / "r.png")
    img = Image.open(out).convert("RGB")
    assert img.size[1] == 200 and img.size[0] > 400
    assert img.getpixel((200, 40)) == PALETTE[0]  # colours follow the order of the sets


def test_refuses_huge_and_undecodable_images(tmp_path):
    with pytest.raises(PixmoError, match="more than max_pixels 1000"):
        render_points(png_bytes(100, 100), SETS, tmp_path / "x.png", max_pixels=1000)
    with pytest.raises(PixmoError, match="cannot decode image"):
        render_points(b"not an image", SETS, tmp_path / "y.png")
    assert not list(tmp_path.iterdir())
