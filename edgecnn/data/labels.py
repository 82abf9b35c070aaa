"""Which model output each class of an evaluation set is: resolved, or refused with the fix.

A wrong mapping gives a plausible, silently wrong top-1 (sorted folder indices 0..20 scored
against a 1000-class model), so accuracy is only reported when the mapping is known:

1. a classes file (``classes.txt``) or integer labels in a list file say it explicitly;
2. folder names that are the model's own labels (ONNX metadata, checkpoint) map by name;
3. folder names that are ImageNet synsets, for a 1000-output model, map to the standard
   ImageNet order (:mod:`edgecnn.imagenet`: torchvision's and Caffe's order);
4. as many folders as the model has outputs map in sorted order (the usual training layout).

Anything else is unresolved: the caller reports agreement with FP32 only, or refuses.
"""

from __future__ import annotations

from typing import Optional

from edgecnn.imagenet import NUM_CLASSES as IMAGENET_CLASSES
from edgecnn.imagenet import synsets as imagenet_synsets


def resolve_labels(dataset, num_outputs: Optional[int], model_labels: Optional[list[str]] = None) -> Optional[str]:
    """Re-index ``dataset``'s labels to model outputs in place; None when resolved, else the reason.

    ``dataset`` is an :class:`edgecnn.data.images.ImageFolder`; an unlabelled one is left alone.
    """
    if not dataset.labelled:
        return None
    classes = dataset.classes
    explicit = dataset.classes_file is not None or classes is None  # a classes file, or a labelled list file
    if explicit:
        count = dataset.num_classes
        if num_outputs is not None and count is not None and count > num_outputs:
            return (
                f"'{dataset.root}' has {count} classes but the model outputs {num_outputs}; "
                "evaluate on data with the model's classes"
            )
        return None
    target: Optional[list[str]] = None
    if model_labels and all(c in model_labels for c in classes):
        target = list(model_labels)
    elif num_outputs == IMAGENET_CLASSES and (model_labels is None or list(model_labels) == list(imagenet_synsets())):
        synsets = imagenet_synsets()
        if all(c in synsets for c in classes):
            target = list(synsets)
    if target is not None:
        index = {name: i for i, name in enumerate(target)}
        mapping = [index[c] for c in classes]
        dataset.items = [(path, mapping[label]) for path, label in dataset.items]
        dataset.classes = target
        dataset.class_names = target
        dataset.label_source = "model labels" if target == list(model_labels or ()) else "ImageNet synset order"
        return None
    if num_outputs is None or len(classes) == num_outputs:
        return None
    shown = ", ".join(classes[:3]) + (", ..." if len(classes) > 3 else "")
    return (
        f"cannot tell which of the model's {num_outputs} outputs each of the {len(classes)} class folders of "
        f"'{dataset.root}' ({shown}) is; add a classes.txt to it or its parent (line i: '<folder name> <words>' "
        "for output i)"
    )


def drop_labels(dataset) -> None:
    """Make ``dataset`` unlabelled (agreement with FP32 can still be measured on it)."""
    dataset.items = [(path, None) for path, _ in dataset.items]
    dataset.classes = dataset.class_names = None
