"""What to ship: an ``edgecnn compress`` output folder or a bare ONNX file, resolved to one model,
its target, class names, candidate golden images and the report's numbers (no torch)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from edgecnn.errors import UserError
from edgecnn.targets import DEFAULT_TARGET, TARGETS
GOLDEN_CANDIDATES = 8  # images tried, spread over the data, when picking the golden one
_SYNSET = re.compile(r"^n\d{8}$")


@dataclass
class Candidate:
    """A possible golden image: how to open it, its true class (or None) and where it came from."""

    open: Callable[[], "object"]  # -> PIL.Image
    label: Optional[int]
    origin: str


@dataclass
class Source:
    onnx: Path
    target: str
    metadata: dict
    folder: Optional[Path] = None
    report: Optional[dict] = None
    row: Optional[dict] = None  # report row measuring this very file
    baseline: Optional[dict] = None  # report row of the FP32 baseline
    shown: str = ""  # how README.md and manifest.json name the source

    @property
    def quantized(self) -> bool:
        precision = self.metadata.get("edgecnn.precision", "fp32")
        return precision not in ("fp32", "fp16")

    @property
    def digits(self) -> bool:
        """The embedded digits baseline (no --weights at compress time)."""
        if self.report is not None:
            return (self.report.get("data") or {}).get("source") == "embedded-digits"
        return self.metadata.get("edgecnn.weights", "").startswith("embedded digits baseline")


def resolve(path, target: Optional[str] = None) -> Source:
    """The ONNX file to ship from ``path`` (output folder or .onnx) for ``target``."""
    from edgecnn.export.metadata import read_metadata

    path = Path(path)
    if target is not None and target not in TARGETS:
        raise UserError(f"unknown target '{target}'; valid: {', '.join(TARGETS)}")
    if path.is_dir():
        report_path = path / "report.json"
        if not report_path.is_file():
            raise UserError(f"'{path}' is not an edgecnn output folder (no report.json); give the folder "
                            "'edgecnn compress' wrote or a model.onnx")
        try:
            report = json.loads(report_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"'{report_path}' is not valid JSON; re-run edgecnn compress") from None
        artifacts = report.get("artifacts") or {}
        if not artifacts:
            raise UserError(f"'{path}' holds no exported model (report.json lists no artifacts); add an export stage")
        if target is None:
            target = next((t for t in report.get("targets", []) if t in artifacts), next(iter(artifacts)))
        if target not in artifacts:
            raise UserError(f"'{path}' has no {target} model; it has: {', '.join(artifacts)} (choose one with --target)")
        onnx = path / artifacts[target]["onnx"]
        if not onnx.is_file():
            raise UserError(f"'{onnx}' listed in report.json is missing; re-run edgecnn compress")
        rows = report.get("results") or []
        row = next((r for r in rows if r.get("onnx") == artifacts[target]["onnx"] and r.get("target") == target), None)
        if row is None:
            row = next((r for r in reversed(rows) if r.get("target") == target and r.get("onnx")), None)
        baseline = next((r for r in rows if r.get("stage") == "baseline"), None)
        return Source(onnx, target, read_metadata(onnx), path, report, row, baseline, shown=str(path))
    if path.suffix.lower() != ".onnx" or not path.is_file():
        raise UserError(f"'{path}' is neither an edgecnn output folder nor an .onnx file; check the path")
    metadata = read_metadata(path)
    made_for = metadata.get("edgecnn.target") or metadata.get("edgecnn.quant_target")
    source = Source(path, target or made_for or DEFAULT_TARGET, metadata, shown=str(path))
    if made_for and made_for in TARGETS and made_for != source.target and source.quantized:
        raise UserError(f"'{path}' was quantized for {made_for} (its Q/DQ encoding is per target); ship it with "
                        f"--target {made_for}, or compress again for {source.target}")
    return source


# --- labels ---------------------------------------------------------------------------------


def read_labels_file(path) -> list[str]:
    """One class name per line, or classes.txt lines ``<synset> <words>`` (the words are kept)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"labels file '{path}' does not exist")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if lines and all(_SYNSET.match(line.split(" ", 1)[0]) and " " in line for line in lines):
        return [line.split(" ", 1)[1].strip() for line in lines]
    return lines


def labels_for(source: Source, num_outputs: Optional[int], labels_file=None) -> tuple[list[str], str]:
    """(class names in output order, where they came from). Refuses a count that is not the output count."""
    from edgecnn.export.metadata import labels_from_metadata

    found: list[tuple[list[str], str]] = []
    if labels_file is not None:
        found.append((read_labels_file(labels_file), f"--labels {labels_file}"))
    meta = labels_from_metadata(source.metadata)
    if meta:
        found.append((meta, "the model's ONNX metadata"))
    data_set = _data_folder(source)
    if data_set is not None and data_set.class_names:
        found.append((list(data_set.class_names), f"the classes of {data_set.root}"))
    for labels, origin in found:
        if num_outputs is None or len(labels) == num_outputs:
            return labels, origin
        if origin.startswith("--labels"):
            raise UserError(f"{labels_file} has {len(labels)} class names but the model has {num_outputs} outputs; "
                            "give one name per output")
    raise UserError(f"'{source.onnx}' carries no class names for its {num_outputs} outputs; pass --labels FILE "
                    "(one name per line, or an ImageNet classes.txt)")


# --- golden candidates ----------------------------------------------------------------------


def _data_folder(source: Source):
    """The labelled evaluation (else calibration) images the output folder's run used, if still there."""
    if source.report is None or source.digits:
        return None
    from edgecnn.data.images import ImageFolder

    data = source.report.get("data") or {}
    from_output = data.get("from_output") or {}
    for key in ("eval", "calib"):
        # As typed (relative to where compress ran), else relative to the output folder (from anywhere).
        tries = [Path(data[key]).expanduser()] if data.get(key) else []
        if from_output.get(key) and source.folder is not None:
            tries.append(source.folder / from_output[key])
        for folder in tries:
            if not folder.exists():
                continue
            try:
                return ImageFolder(folder)
            except UserError:
                continue
    return None


def _spread(count: int, limit: int) -> list[int]:
    if count <= limit:
        return list(range(count))
    return sorted({round(i * (count - 1) / (limit - 1)) for i in range(limit)})


def candidates(source: Source, golden=None) -> Iterator[Candidate]:
    """Golden image candidates: ``--golden IMAGE``, else images of the run's data, else the embedded digits."""
    from PIL import Image

    if golden is not None:
        golden = Path(golden)
        if not golden.is_file():
            raise UserError(f"golden image '{golden}' does not exist")
        yield Candidate(lambda: _open(golden), None, str(golden))
        return
    if source.digits:
        from edgecnn.data import embedded

        images, labels = embedded.load_digits()
        _, test = embedded.split_indices(labels)
        for i in _spread(len(test), GOLDEN_CANDIDATES):
            index = int(test[i])
            yield Candidate(lambda index=index: Image.fromarray(images[index], mode="L").convert("RGB"),
                            int(labels[index]), f"embedded UCI digits, test split, image {index}")
        return
    data_set = _data_folder(source)
    if data_set is None:
        where = "the output folder's data is gone" if source.report is not None else "a bare ONNX file has no data"
        raise UserError(f"no golden image: {where}; pass --golden IMAGE (an image of a class the model knows)")
    for i in _spread(len(data_set.items), GOLDEN_CANDIDATES):
        item, label = data_set.items[i]
        yield Candidate(lambda item=item: _open(item), label, str(item))


def _open(path: Path):
    from edgecnn.data.images import open_image

    return open_image(path)
