"""The images a command is given: image files and folders (:func:`image_records`), in reference mode each with
the reference it is compared with, and the check that a model and its data agree on reference mode.

``predict`` pairs new images with their golden images by a pairs CSV, one golden image, or a name pattern with a
folder of golden images (:class:`ReferenceSource`), or, when none is given, by the run's own ``data.reference_*``
settings (:func:`paired_records`). :func:`check_reference_mode` refuses a reference model without references and a
template-free model with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fabml.anomaly.runs import FittedModel
from fabml.data.anomaly_discovery import MASK_FOLDER_NAMES, ImageRecord, resolve_path
from fabml.data.reference_pairs import read_pairs
from fabml.errors import ConfigError, DataError


def image_records(inputs: list[str], extensions: list[str]) -> list[ImageRecord]:
    """Records (label 0, type "unknown") for image files and folders of images given on the command line.

    Folders are searched recursively, skipping mask folders (masks, mask, ground_truth, gt), ``*_mask``
    files and a ``.png`` beside a same-name image of another type (the magnetic-tile mask convention).
    """
    suffixes = {e.lower().lstrip(".") for e in extensions}
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*")
                if p.is_file() and p.suffix.lower().lstrip(".") in suffixes and not p.stem.lower().endswith("_mask")
                and not any(part.lower() in MASK_FOLDER_NAMES for part in p.relative_to(path).parts[:-1])
            )
            stems = {(p.parent, p.stem) for p in found if p.suffix.lower() != ".png"}
            found = [p for p in found if not (p.suffix.lower() == ".png" and (p.parent, p.stem) in stems)]
            if not found:
                raise DataError(f"no images ({', '.join(sorted(suffixes))}) in folder {path}")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise DataError(f"image or folder not found: {path}")
    return [ImageRecord(str(p), 0, "unknown", None) for p in paths]


@dataclass
class ReferenceSource:
    """How ``predict`` pairs new images with references (reference mode): at most one of a pairs CSV,
    one golden image, or a name pattern with a folder of golden images; all empty = the run's own
    ``data.reference_image`` / ``data.reference_pattern`` settings."""

    pairs_csv: str | None = None
    reference: str | None = None
    pattern: str | None = None
    reference_dir: str | None = None

    @property
    def given(self) -> bool:
        return any((self.pairs_csv, self.reference, self.pattern, self.reference_dir))


def paired_records(fitted: FittedModel, inputs: list[str], source: ReferenceSource) -> list[ImageRecord]:
    """Records of the images to predict, each with its reference (module ``fabml.data.reference_pairs``)."""
    data = fitted.cfg.data
    if not source.given:
        if not (data.reference_image or data.reference_pattern):
            raise ConfigError("the reference model needs each image's reference: pass --pairs CSV, --reference "
                              "GOLDEN or --reference-pattern RX with --reference-dir DIR")
        source = ReferenceSource(
            reference=str(resolve_path(data.root, data.reference_image)) if data.reference_image else None,
            pattern=data.reference_pattern or None,
            reference_dir=str(resolve_path(data.root, data.reference_dir)) if data.reference_pattern else None)
    if source.pairs_csv is not None:
        if inputs:
            raise ConfigError("give the images either as arguments or in the pairs CSV, not both")
        pairs = read_pairs(pairs_csv=source.pairs_csv)
    else:
        if (source.pattern is None) != (source.reference_dir is None):
            raise ConfigError("--reference-pattern and --reference-dir go together: the pattern names each image's "
                              "golden image, the folder holds them")
        paths = [r.path for r in image_records(inputs, data.extensions)]
        pairs = read_pairs(paths, pattern=source.pattern, reference_dir=source.reference_dir,
                           reference=source.reference)
    return [ImageRecord(p.image, 0, "unknown", None, p.reference) for p in pairs]


def check_reference_mode(name: str, model: Any, records: list[ImageRecord]) -> None:
    """One-line ConfigError when a reference model meets images without references or a template-free
    model meets pairs (a reference setting given to PatchCore would otherwise be silently ignored)."""
    pairs = bool(getattr(model, "pair_input", False))
    with_reference = any(r.reference for r in records)
    if pairs and not with_reference:
        raise ConfigError(f"model '{name}' compares each image with its reference, but no image has one: set "
                          "data.pairs_csv, data.reference_image or data.reference_pattern with data.reference_dir")
    if with_reference and not pairs:
        raise ConfigError(f"the images come with references (data.pairs_csv / reference_image / reference_pattern) "
                          f"but model '{name}' does not use them; choose --model reference or drop those settings")
