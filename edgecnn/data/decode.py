"""One way to turn an image file into 8-bit RGB pixels, for every reader of images.

Pillow opens many files in modes whose plain ``convert("RGB")`` gives other pixels than the
picture shows: 16-bit grayscale is clipped to 255 (almost white), transparent pixels show
whatever colour they happen to store, EXIF-rotated photos stay on their side. The rules:

* EXIF orientation is applied (the picture as a viewer shows it).
* 16-bit samples are scaled to 8 bits (``round(v * 255 / 65535)``); 16-bit RGB is read by
  Pillow as its high bytes.
* Transparency (an alpha channel, a palette's or a colour's ``transparency``) is composited
  onto white, as a viewer shows it on a white page; it is never dropped.
* Palette, grayscale, 1-bit, CMYK (no ICC profile applied) and YCbCr convert to RGB.
* Any other mode (32-bit integer or float pixels, LAB, ...) is refused: its range is unknown.
* Animated files: the first frame.

The shipped bundle's ``classify.py`` runs without edgecnn and carries a copy of
:func:`to_rgb` (``edgecnn/ship/sample.py``); a test checks both give identical pixels.
"""

from __future__ import annotations


class UnsupportedImage(ValueError):
    """An image whose pixels cannot be turned into RGB without guessing."""


def to_rgb(image):
    """An opened PIL image -> an RGB PIL image of the pixels a viewer shows (rules above)."""
    import numpy as np
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode.startswith("I;16"):
        wide = np.asarray(image).astype(np.uint32)
        image = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), mode="L")
        mode = "L"
    if "transparency" in image.info or mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        if mode not in ("1", "L", "P", "RGB", "RGBA", "RGBa", "LA", "La", "PA"):
            raise UnsupportedImage(f"transparency in {mode} pixels is not supported")
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "RGB":
        return image.copy()
    if mode in ("1", "L", "P", "CMYK", "YCbCr", "RGBX", "HSV"):
        return image.convert("RGB")
    raise UnsupportedImage(f"{mode} pixels (range unknown); convert it to 8- or 16-bit RGB or grayscale")
