"""Preprocessing recipes: presets, overrides, metadata round trip, pixel values."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgecnn.errors import UserError
from edgecnn.preprocess import PRESETS, Preprocess, get_preset


def solid(color, size=(300, 200)):
    return Image.new("RGB", size, color)


def test_presets():
    tv, caffe, tf = PRESETS["torchvision"], PRESETS["caffe"], PRESETS["tf"]
    assert (tv.input_size, tv.resize, tv.resize_mode, tv.crop, tv.channel_order) == (224, 256, "shorter", 224, "RGB")
    assert tv.mean == (0.485, 0.456, 0.406) and tv.std == (0.229, 0.224, 0.225) and tv.value_scale == 1 / 255
    assert (caffe.input_size, caffe.resize, caffe.resize_mode, caffe.crop, caffe.channel_order) == (227, 256, "warp", 227, "BGR")
    assert caffe.mean == (104.0, 117.0, 123.0) and caffe.std == (1.0, 1.0, 1.0) and caffe.value_scale == 1.0
    assert (tf.resize, tf.crop, tf.channel_order, tf.value_scale) == (256, 224, "RGB", 1 / 127.5)
    with pytest.raises(UserError, match="unknown preprocess preset 'keras'; valid: torchvision, caffe, tf"):
        get_preset("keras")


def test_pixel_values_per_preset():
    image = solid((255, 128, 0))
    tv = PRESETS["torchvision"].apply(image)
    assert tv.shape == (3, 224, 224) and tv.dtype == np.float32
    expected = [(255 / 255 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (0 - 0.406) / 0.225]
    assert np.allclose(tv[:, 100, 100], expected, atol=1e-5)
    caffe = PRESETS["caffe"].apply(image)
    assert caffe.shape == (3, 227, 227)
    assert np.allclose(caffe[:, 5, 5], [0 - 104, 128 - 117, 255 - 123])  # BGR order
    tf = PRESETS["tf"].apply(image)
    assert np.allclose(tf[:, 0, 0], [1.0, 128 / 127.5 - 1, -1.0], atol=1e-6)


def test_shorter_side_resize_and_centre_crop():
    # A 400x200 image, left half black, right half white: shorter side 200 -> 256 makes it
    # 512x256; the centre 224 crop spans x in [144, 368): columns < 112 black, >= 112 white.
    array = np.zeros((200, 400, 3), np.uint8)
    array[:, 200:] = 255
    out = Preprocess(mean=(0, 0, 0), std=(1, 1, 1)).apply(Image.fromarray(array))
    assert out.shape == (3, 224, 224)
    assert out[0, 50, :100].max() < 0.01 and out[0, 50, 124:].min() > 0.99


def test_warp_ignores_aspect_ratio():
    array = np.zeros((100, 400, 3), np.uint8)
    array[:, :200] = 255  # left half white
    p = Preprocess(input_size=16, resize=16, resize_mode="warp", crop=16, mean=(0, 0, 0), std=(1, 1, 1))
    out = p.apply(Image.fromarray(array))
    assert out[0, 8, :7].min() > 0.99 and out[0, 8, 9:].max() < 0.01


def test_grayscale_and_alpha_images_become_rgb():
    for mode in ("L", "RGBA", "P"):
        out = PRESETS["torchvision"].apply(Image.new(mode, (64, 64)))
        assert out.shape == (3, 224, 224)


def test_metadata_round_trip():
    for preset in PRESETS.values():
        meta = preset.to_metadata()
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
        assert all(k.startswith("edgecnn.preprocess.") for k in meta)
        back = Preprocess.from_metadata({**meta, "producer": "x"})
        assert back == preset and back.value_scale == preset.value_scale and back.name == preset.name
    assert Preprocess.from_metadata({"other": "1"}) is None


def test_overrides():
    tv = PRESETS["torchvision"]
    custom = tv.with_overrides(["crop=200", "mean=0.5", "channel_order=bgr", "value_scale=1/127.5"])
    assert custom.crop == 200 and custom.mean == (0.5, 0.5, 0.5) and custom.channel_order == "BGR"
    assert custom.value_scale == pytest.approx(1 / 127.5) and custom.name == "custom"
    smaller = tv.replace(input_size=160)
    assert (smaller.input_size, smaller.crop, smaller.resize) == (160, 160, 183)
    assert tv.with_overrides([]) is tv
    for bad, message in [
        (["crop"], "is not KEY=VALUE"),
        (["colour=RGB"], "unknown preprocess field 'colour'"),
        (["crop=big"], "preprocess crop='big' is not a valid value"),
        (["resize_mode=fit"], "resize_mode 'fit' is not valid; valid: shorter, warp"),
        (["crop=300"], "crop 300 is larger than resize 256"),
        (["std=0"], "std values must be non-zero"),
    ]:
        with pytest.raises(UserError, match=message):
            tv.with_overrides(bad)
