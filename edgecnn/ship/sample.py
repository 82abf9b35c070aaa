#!/usr/bin/env python3
"""Classify an image with this bundle's model. Needs onnxruntime, numpy and pillow, nothing else.

    python classify.py IMAGE                  # top-5 labels with probabilities
    python classify.py IMAGE --model model.ort
    python classify.py --tensor golden/input.npy --json
    python classify.py --selftest             # the golden test: exit 1 when it fails
    python classify.py IMAGE --save-input x.npy  # compare your app's preprocessing with this one

preprocess.json (resize, crop, mean, std, channel order, value scale) and labels.txt (one
class name per line, in output order) sit next to this file.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

HERE = Path(__file__).resolve().parent


def load_preprocess(path=HERE / "preprocess.json"):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def load_labels(path=HERE / "labels.txt"):
    return Path(path).read_text(encoding="utf-8").splitlines()


# A copy of edgecnn.data.decode (this file runs without edgecnn): 16-bit samples scaled to
# 8 bits, transparency composited onto white, EXIF orientation applied, unknown modes refused.
class UnsupportedImage(ValueError):
    """An image whose pixels cannot be turned into RGB without guessing."""


def to_rgb(image):
    """An opened PIL image -> an RGB PIL image of the pixels a viewer shows (rules above)."""
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


def open_rgb(path):
    """The RGB pixels of an image file; one line naming the file when they cannot be read."""
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except (OSError, ValueError, SyntaxError) as exc:
        raise SystemExit(f"classify.py: cannot read image '{path}': {exc}") from None


def preprocess(image, p):
    """PIL image -> float32 (1, 3, input_size, input_size): resize, centre crop, scale, normalise."""
    image = image.convert("RGB")
    size, resize, crop = int(p["input_size"]), int(p["resize"]), int(p["crop"])
    if p["resize_mode"] == "warp":
        image = image.resize((resize, resize), Image.BILINEAR)
    else:  # "shorter": the shorter side becomes `resize`, aspect ratio kept
        width, height = image.size
        if width <= height:
            new_size = (resize, max(1, int(resize * height / width)))
        else:
            new_size = (max(1, int(resize * width / height)), resize)
        if new_size != image.size:
            image = image.resize(new_size, Image.BILINEAR)
    width, height = image.size
    crop_w, crop_h = min(crop, width), min(crop, height)
    left, top = int(round((width - crop_w) / 2.0)), int(round((height - crop_h) / 2.0))
    image = image.crop((left, top, left + crop_w, top + crop_h))
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8).astype(np.float32)
    if p["channel_order"] == "BGR":
        pixels = pixels[..., ::-1]
    mean, std = np.asarray(p["mean"], dtype=np.float32), np.asarray(p["std"], dtype=np.float32)
    pixels = (pixels * np.float32(p["value_scale"]) - mean) / std
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None], dtype=np.float32)


class Classifier:
    """One ONNX Runtime session (CPU) on the bundle's .onnx or .ort file."""

    def __init__(self, model=HERE / "model.onnx"):
        self.session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0]
        self.labels = load_labels()
        self.preprocess = load_preprocess()

    def logits(self, tensor):
        dtype = np.float16 if self.input.type == "tensor(float16)" else np.float32
        out = self.session.run(None, {self.input.name: tensor.astype(dtype)})[0]
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def top5(self, logits):
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        order = np.argsort(-logits, kind="stable")[:5]
        return [{"index": int(i), "label": self.labels[i], "logit": float(logits[i]), "probability": float(probs[i])}
                for i in order]


def selftest(classifier):
    """The golden test: golden/image.png must give golden/expected.json's top-5 within its tolerance."""
    expected = json.loads((HERE / "golden" / "expected.json").read_text(encoding="utf-8"))
    image = preprocess(open_rgb(HERE / expected["image"]), classifier.preprocess)
    if not np.allclose(image, np.load(HERE / expected["input"]), rtol=0, atol=expected["input_atol"]):
        return "the preprocessed golden image differs from golden/input.npy"
    logits = classifier.logits(image)
    if int(np.argmax(logits)) != expected["top5"][0]["index"]:
        return f"top-1 is class {int(np.argmax(logits))}, expected {expected['top5'][0]['index']}"
    for entry in expected["top5"]:
        if abs(logits[entry["index"]] - entry["logit"]) > expected["atol"]:
            return f"logit of class {entry['index']} is {logits[entry['index']]:.6g}, expected {entry['logit']:.6g}"
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description="Classify an image with this bundle's model.")
    parser.add_argument("image", nargs="?", help="image file (any format pillow reads)")
    parser.add_argument("--model", default=str(HERE / "model.onnx"), help="model.onnx (default) or model.ort")
    parser.add_argument("--tensor", help="a preprocessed .npy input instead of an image")
    parser.add_argument("--json", action="store_true", help="print one JSON object (top-5 and every logit)")
    parser.add_argument("--save-input", help="also write the preprocessed input to this .npy file")
    parser.add_argument("--selftest", action="store_true", help="run the golden test")
    args = parser.parse_args(argv)
    classifier = Classifier(args.model)
    if args.selftest:
        problem = selftest(classifier)
        print(f"golden test {'FAILED: ' + problem if problem else 'passed'} ({Path(args.model).name})")
        return 1 if problem else 0
    if (args.image is None) == (args.tensor is None):
        parser.error("give an IMAGE or --tensor FILE.npy")
    tensor = np.load(args.tensor) if args.tensor else preprocess(open_rgb(args.image), classifier.preprocess)
    if args.save_input:
        np.save(args.save_input, tensor)
    logits = classifier.logits(tensor)
    top5 = classifier.top5(logits)
    if args.json:
        versions = {"onnxruntime": ort.__version__, "numpy": np.__version__, "pillow": Image.__version__,
                    "python": sys.version.split()[0]}
        print(json.dumps({"top5": top5, "logits": logits.tolist(), "versions": versions}))
    else:
        for rank, entry in enumerate(top5, 1):
            print(f"{rank}. {entry['probability']:6.1%}  {entry['label']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
