"""Per-model image preprocessing as data (no torch).

A model is only as accurate as the preprocessing it was trained with: torchvision models
want RGB in [0, 1] normalised by ImageNet statistics, Caffe models BGR minus a mean pixel,
TensorFlow models RGB in [-1, 1]. :class:`Preprocess` holds the recipe, travels with the
model into ONNX ``metadata_props`` and is applied to PIL images by :meth:`Preprocess.apply`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from edgecnn.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
METADATA_PREFIX = "edgecnn.preprocess."


@dataclass(frozen=True)
class Preprocess:
    """resize -> centre crop -> (resize to input_size if it differs) -> scale, normalise, CHW.

    Output pixel = ``(pixel * value_scale - mean) / std`` per channel, channels in
    ``channel_order``, float32, shape (3, input_size, input_size).
    """

    input_size: int = 224
    resize: int = 256
    resize_mode: str = "shorter"  # 'shorter': shorter side to `resize`, aspect kept; 'warp': resize x resize
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "RGB"
    value_scale: float = 1 / 255
    name: str = field(default="custom", compare=False)

    def __post_init__(self):
        if self.resize_mode not in ("shorter", "warp"):
            raise UserError(f"preprocess resize_mode '{self.resize_mode}' is not valid; valid: shorter, warp")
        if self.channel_order not in ("RGB", "BGR"):
            raise UserError(f"preprocess channel_order '{self.channel_order}' is not valid; valid: RGB, BGR")
        for key in ("input_size", "resize", "crop"):
            if int(getattr(self, key)) < 1:
                raise UserError(f"preprocess {key} must be a positive integer, got {getattr(self, key)}")
        if self.crop > self.resize:
            raise UserError(f"preprocess crop {self.crop} is larger than resize {self.resize}; make resize >= crop")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise UserError("preprocess mean and std need 3 values each (one per channel)")
        if any(s == 0 for s in self.std):
            raise UserError("preprocess std values must be non-zero")

    # --- overrides -------------------------------------------------------------------------

    def replace(self, **changes) -> "Preprocess":
        """A copy with fields changed. Changing ``input_size`` alone scales resize and crop with it
        (224 -> 160 turns resize 256 / crop 224 into 183 / 160), keeping the crop ratio."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise UserError(
                f"unknown preprocess field '{sorted(unknown)[0]}'; valid: {', '.join(f.name for f in dataclasses.fields(self))}"
            )
        if "input_size" in changes and "crop" not in changes and "resize" not in changes:
            size = int(changes["input_size"])
            changes["crop"] = size
            changes["resize"] = int(round(self.resize * size / self.crop))
        if "name" not in changes:
            changes["name"] = "custom" if changes else self.name
        return dataclasses.replace(self, **changes)

    def with_overrides(self, pairs) -> "Preprocess":
        """Apply ``KEY=VALUE`` strings (CLI ``--preprocess-set``), values parsed per field type."""
        changes = {}
        for pair in pairs or ():
            if "=" not in pair:
                raise UserError(f"--preprocess-set '{pair}' is not KEY=VALUE, e.g. --preprocess-set crop=224")
            key, value = (part.strip() for part in pair.split("=", 1))
            changes[key] = _parse_field(key, value)
        return self.replace(**changes) if changes else self

    # --- metadata --------------------------------------------------------------------------

    def to_metadata(self) -> dict[str, str]:
        """String key/values for ONNX ``metadata_props`` (keys prefixed ``edgecnn.preprocess.``)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                text = ",".join(repr(float(v)) for v in value)
            elif isinstance(value, float):
                text = repr(value)
            else:
                text = str(value)
            out[METADATA_PREFIX + f.name] = text
        return out

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> Optional["Preprocess"]:
        """Inverse of :meth:`to_metadata`; other keys are ignored; None when no key is present."""
        fields = {k[len(METADATA_PREFIX):]: v for k, v in metadata.items() if k.startswith(METADATA_PREFIX)}
        if not fields:
            return None
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: _parse_field(k, v) for k, v in fields.items() if k in known}
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # --- application -----------------------------------------------------------------------

    def apply(self, image) -> np.ndarray:
        """PIL image -> float32 array (3, input_size, input_size)."""
        from PIL import Image

        image = image.convert("RGB")
        if self.resize_mode == "warp":
            image = image.resize((self.resize, self.resize), Image.BILINEAR)
        else:
            width, height = image.size
            if width <= height:
                new_w, new_h = self.resize, max(1, int(self.resize * height / width))
            else:
                new_w, new_h = max(1, int(self.resize * width / height)), self.resize
            if (new_w, new_h) != (width, height):
                image = image.resize((new_w, new_h), Image.BILINEAR)
        width, height = image.size
        crop_w, crop_h = min(self.crop, width), min(self.crop, height)
        left = int(round((width - crop_w) / 2.0))
        top = int(round((height - crop_h) / 2.0))
        image = image.crop((left, top, left + crop_w, top + crop_h))
        if image.size != (self.input_size, self.input_size):
            image = image.resize((self.input_size, self.input_size), Image.BILINEAR)
        return self.normalize(np.asarray(image, dtype=np.uint8))

    def normalize(self, rgb_hwc: np.ndarray) -> np.ndarray:
        """uint8 RGB HWC array -> normalised float32 CHW in this recipe's channel order."""
        pixels = rgb_hwc.astype(np.float32)
        if self.channel_order == "BGR":
            pixels = pixels[..., ::-1]
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        pixels = (pixels * np.float32(self.value_scale) - mean) / std
        return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)


PRESETS: dict[str, Preprocess] = {
    # torchvision: RGB, shorter side 256 (bilinear), centre crop 224, /255, ImageNet mean/std.
    "torchvision": Preprocess(name="torchvision"),
    # Caffe (SqueezeNet's original training): BGR, warp to 256x256, crop 227, minus mean pixel.
    "caffe": Preprocess(
        input_size=227, resize=256, resize_mode="warp", crop=227, mean=(104.0, 117.0, 123.0),
        std=(1.0, 1.0, 1.0), channel_order="BGR", value_scale=1.0, name="caffe",
    ),
    # TensorFlow (TF-slim / Keras MobileNets): RGB in [-1, 1].
    "tf": Preprocess(
        input_size=224, resize=256, resize_mode="shorter", crop=224, mean=(1.0, 1.0, 1.0),
        std=(1.0, 1.0, 1.0), channel_order="RGB", value_scale=1 / 127.5, name="tf",
    ),
}


def get_preset(name: str) -> Preprocess:
    """A named preset; UserError listing the presets otherwise."""
    if isinstance(name, Preprocess):
        return name
    key = str(name).strip().lower()
    if key not in PRESETS:
        raise UserError(f"unknown preprocess preset '{name}'; valid: {', '.join(PRESETS)}")
    return PRESETS[key]


def _parse_field(key: str, text: str):
    """Parse one field value from a string (metadata or CLI)."""
    types = {f.name: f.type for f in dataclasses.fields(Preprocess)}
    if key not in types:
        raise UserError(f"unknown preprocess field '{key}'; valid: {', '.join(types)}")
    try:
        if key in ("mean", "std"):
            values = tuple(float(v) for v in text.replace("(", "").replace(")", "").split(",") if v.strip())
            if len(values) == 1:
                values = values * 3
            return values
        if key in ("input_size", "resize", "crop"):
            return int(text)
        if key == "value_scale":
            if "/" in text:
                num, den = text.split("/", 1)
                return float(num) / float(den)
            return float(text)
        if key == "channel_order":
            return text.strip().upper()
        return text.strip()
    except ValueError:
        raise UserError(f"preprocess {key}={text!r} is not a valid value") from None
