"""Every image file is decoded to the RGB pixels a viewer shows, or refused naming the file;
the shipped classify.py (standalone copy of the decoder) gives the very same pixels."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgecnn.data import decode
from edgecnn.data.images import open_image
from edgecnn.errors import UserError
from edgecnn.ship import sample

WHITE = (255, 255, 255)


def _gray16(path: Path) -> np.ndarray:
    values = np.linspace(0, 65535, 6 * 8).reshape(6, 8).astype(np.uint16)
    Image.fromarray(values).save(path)  # a 16-bit grayscale PNG (mode I;16)
    return np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)


def _odd_images(root: Path) -> dict[str, tuple[Path, object]]:
    """name -> (file, check(rgb array) or None)."""
    out = {}
    expected16 = _gray16(root / "gray16.png")
    out["gray16"] = (root / "gray16.png", lambda a: np.array_equal(a[..., 0], expected16) and np.array_equal(a[..., 0], a[..., 2]))

    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([10, 20, 30, 200, 0, 0] + [0] * 762)
    palette.putpixel((1, 1), 1)
    palette.save(root / "palette_transparent.png", transparency=0)  # index 0 (dark blue) is transparent
    out["palette_transparent"] = (root / "palette_transparent.png", lambda a: tuple(a[0, 0]) == WHITE and tuple(a[1, 1]) == (200, 0, 0))

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)
    rgba[0, 1] = (0, 0, 0, 0)  # fully transparent black: white, not black
    rgba[0, 2] = (0, 0, 255, 128)  # half-transparent blue over white
    Image.fromarray(rgba, mode="RGBA").save(root / "alpha.png")
    out["alpha"] = (root / "alpha.png", lambda a: tuple(a[0, 0]) == (255, 0, 0) and tuple(a[0, 1]) == WHITE
                    and abs(int(a[0, 2, 0]) - 127) <= 1 and a[0, 2, 2] == 255)

    la = Image.fromarray(np.dstack([np.full((3, 3), 40, np.uint8), np.zeros((3, 3), np.uint8)]), mode="LA")
    la.save(root / "gray_alpha.png")
    out["gray_alpha"] = (root / "gray_alpha.png", lambda a: (a == 255).all())

    tall = np.zeros((6, 4, 3), np.uint8)
    tall[0, 0] = (255, 0, 0)  # marked top-left corner of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    Image.fromarray(tall).save(root / "exif_rotated.png", exif=exif.tobytes())
    out["exif_rotated"] = (root / "exif_rotated.png", lambda a: a.shape == (4, 6, 3) and tuple(a[0, -1]) == (255, 0, 0))

    Image.new("CMYK", (3, 3), (0, 255, 255, 0)).save(root / "cmyk.tif")
    out["cmyk"] = (root / "cmyk.tif", lambda a: (a.reshape(-1, 3) == (255, 0, 0)).all())

    Image.fromarray(np.full((3, 5), 77, np.uint8), mode="L").save(root / "gray.png")
    out["gray"] = (root / "gray.png", lambda a: (a == 77).all())

    Image.new("1", (4, 4), 1).save(root / "bilevel.png")
    out["bilevel"] = (root / "bilevel.png", lambda a: (a == 255).all())

    Image.new("RGB", (5, 5), (1, 2, 3)).save(root / "plain.png")
    out["plain"] = (root / "plain.png", lambda a: (a.reshape(-1, 3) == (1, 2, 3)).all())

    frames = [Image.new("P", (4, 4), i) for i in (1, 2)]
    for frame in frames:
        frame.putpalette([0, 0, 0, 9, 9, 9, 200, 200, 200] + [0] * 759)
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:])
    out["animated_first_frame"] = (root / "animated.gif", lambda a: (a == 9).all())
    return out


REFUSED = {
    "float.tif": lambda: Image.fromarray(np.full((3, 3), 0.5, np.float32), mode="F"),
    "int32.tif": lambda: Image.fromarray(np.full((3, 3), 70000, np.int32), mode="I"),
}


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    return _odd_images(tmp_path_factory.mktemp("odd-images"))


@pytest.mark.parametrize("name", ["gray16", "palette_transparent", "alpha", "gray_alpha", "exif_rotated", "cmyk", "gray",
                                  "bilevel", "plain", "animated_first_frame"])
def test_decoded_pixels_are_what_a_viewer_shows(name, odd):
    path, check = odd[name]
    rgb = np.asarray(open_image(path))
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert check(rgb), f"{name}: {rgb[:2, :3].tolist()}"


@pytest.mark.parametrize("name", ["gray16", "palette_transparent", "alpha", "gray_alpha", "exif_rotated", "cmyk", "gray",
                                  "bilevel", "plain", "animated_first_frame"])
def test_shipped_classify_py_decodes_the_same_pixels(name, odd):
    path, _ = odd[name]
    assert np.array_equal(np.asarray(open_image(path)), np.asarray(sample.open_rgb(path)))


def test_classify_py_carries_an_exact_copy_of_the_decoder():
    """classify.py cannot import edgecnn; its copy must not drift from the library's."""
    library = inspect.getsource(decode.to_rgb).replace("    import numpy as np\n    from PIL import Image, ImageOps\n\n", "")
    assert inspect.getsource(sample.to_rgb) == library
    assert "edgecnn" not in "".join(line for line in inspect.getsource(sample).splitlines() if line.startswith(("import", "from")))


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_images_of_unknown_range_are_refused_naming_the_file(name, tmp_path):
    path = tmp_path / name
    REFUSED[name]().save(path)
    with pytest.raises(UserError) as refused:
        open_image(path)
    message = str(refused.value)
    assert name in message and "\n" not in message
    with pytest.raises(SystemExit) as bundle_refused:
        sample.open_rgb(path)
    assert name in str(bundle_refused.value)
