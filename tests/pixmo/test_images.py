from __future__ import annotations

import hashlib
import io

import pytest
from PIL import Image

from pixmo.images import ImageConfig, ImageRejected, decode_image, load_image
from pixmo.rejects import Reason
from tests.http_server import LocalServer, Reply


def _jpeg(size=(40, 30), orientation: int | None = None) -> bytes:
    image = Image.new("RGB", size, (10, 200, 30))
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    image.save(buf, format="JPEG", exif=exif.tobytes())
    return buf.getvalue()


def test_describes_original_bytes_without_reencoding():
    data = _jpeg()
    image = decode_image(data, "images/a.jpg")
    assert image.data is data
    assert image.sha256 == hashlib.sha256(data).hexdigest()
    assert (image.format, image.width, image.height, image.orientation) == ("jpeg", 40, 30, 1)
    assert image.sample_json() == {"sha256": image.sha256, "width": 40, "height": 30,
                                   "format": "jpeg", "bytes": len(data),
                                   "source": "images/a.jpg"}


@pytest.mark.parametrize(("orientation", "displayed"), [(3, (40, 30)), (6, (30, 40)),
                                                        (8, (30, 40))])
def test_exif_orientation_swaps_displayed_size(orientation, displayed):
    image = decode_image(_jpeg(orientation=orientation), "x.jpg")
    assert (image.stored_width, image.stored_height) == (40, 30)
    assert (image.width, image.height) == displayed
    assert image.sample_json()["exif_orientation"] == orientation


def test_sha256_policy():
    data = _jpeg()
    wrong = "0" * 64
    with pytest.raises(ImageRejected) as info:
        decode_image(data, "x.jpg", expected_sha256=wrong)
    assert info.value.reason is Reason.IMAGE_SHA256_MISMATCH
    assert wrong in info.value.detail
    flagged = decode_image(data, "x.jpg", ImageConfig(sha256_policy="flag"), wrong)
    assert flagged.sample_json()["sha256_flagged"] is True


def test_pixel_limit_refuses_before_decoding():
    big = io.BytesIO()
    Image.new("L", (4000, 4000)).save(big, format="PNG")  # compresses to a few KiB
    with pytest.raises(ImageRejected) as info:
        decode_image(big.getvalue(), "bomb.png", ImageConfig(max_pixels=1_000_000))
    assert info.value.reason is Reason.IMAGE_TOO_LARGE
    assert "4000x4000" in info.value.detail


@pytest.mark.parametrize("data", [b"not an image", _jpeg()[:200], b""])
def test_unreadable(data):
    with pytest.raises(ImageRejected) as info:
        decode_image(data, "bad.jpg")
    assert info.value.reason is Reason.IMAGE_UNREADABLE


def test_gif_is_refused():
    buf = io.BytesIO()
    Image.new("P", (4, 4)).save(buf, format="GIF")
    with pytest.raises(ImageRejected, match="not jpeg, png or webp"):
        decode_image(buf.getvalue(), "a.gif")


def test_load_from_raw_dir(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images/a.jpg").write_bytes(_jpeg())
    assert load_image("images/a.jpg", tmp_path).width == 40
    for ref, reason in [("images/missing.jpg", Reason.IMAGE_NOT_FOUND),
                        ("../outside.jpg", Reason.IMAGE_NOT_FOUND),
                        ("ftp://host/a.jpg", Reason.IMAGE_NOT_FOUND),
                        ("images", Reason.IMAGE_NOT_FOUND)]:
        with pytest.raises(ImageRejected) as info:
            load_image(ref, tmp_path)
        assert info.value.reason is reason, ref


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_pixels": 0}, "ImageConfig.max_pixels must be >= 1, got 0"),
    ({"max_bytes": -5}, "ImageConfig.max_bytes must be >= 1, got -5"),
    ({"sha256_policy": "loose"},
     r"ImageConfig.sha256_policy must be one of \('strict', 'flag'\), got 'loose'"),
])
def test_config_errors_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ImageConfig(**kwargs)


def test_load_from_a_remote_raw_dir():
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe_file("/img-raw/images/a.jpg", _jpeg())
    assert load_image("images/a.jpg", "memory://img-raw").width == 40
    for ref, reason, detail in [
        ("images/missing.jpg", Reason.IMAGE_NOT_FOUND, "no file images/missing.jpg"),
        ("../a.jpg", Reason.IMAGE_NOT_FOUND, "'../a.jpg' points outside memory://img-raw"),
    ]:
        with pytest.raises(ImageRejected) as info:
            load_image(ref, "memory://img-raw")
        assert (info.value.reason, info.value.detail) == (reason, detail)
    with pytest.raises(ImageRejected) as info:
        load_image("images/a.jpg", "memory://img-raw", ImageConfig(max_bytes=100))
    assert info.value.reason is Reason.IMAGE_TOO_LARGE
    assert info.value.detail.endswith("bytes exceeds the limit of 100")


def test_load_over_http():
    data = _jpeg()
    with LocalServer() as server:
        url = server.route("/a.jpg", Reply(body=data))
        assert load_image(url, "unused").sha256 == hashlib.sha256(data).hexdigest()
        gone = server.route("/gone.jpg", Reply(404))
        with pytest.raises(ImageRejected) as info:
            load_image(gone, "unused")
    assert info.value.reason is Reason.DOWNLOAD_FAILED
    assert info.value.detail == f"{gone}: HTTP 404 Not Found"
