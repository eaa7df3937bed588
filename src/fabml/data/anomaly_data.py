"""The anomaly job's data in one import: settings and discovery, the split, decoding, the dataset.

Each part lives in its own module: :mod:`fabml.data.anomaly_discovery` (settings, records, both
folder layouts), :mod:`fabml.data.anomaly_split` (the normal-only split on
:mod:`fabml.data.splits`), :mod:`fabml.data.images` (Pillow decoding of images and masks) and
:mod:`fabml.data.anomaly_dataset` (records -> tensors); annotations (boxes, COCO, .mat masks) in
:mod:`fabml.data.annotations`.
"""

from fabml.data.annotations import ANNOTATION_FORMATS, Annotation, Box, read_annotation
from fabml.data.anomaly_dataset import AnomalyImageDataset
from fabml.data.anomaly_discovery import (
    DEFAULT_EXTENSIONS,
    LAYOUTS,
    MASK_FOLDER_NAMES,
    NORMAL_NAMES,
    AnomalyDataConfig,
    ImageRecord,
    discover_records,
    mask_gap_notes,
)
from fabml.data.anomaly_split import AnomalySplit, make_split, read_split, split_records, write_split
from fabml.data.images import detect_channels, load_image, load_mask

__all__ = [
    "ANNOTATION_FORMATS",
    "Annotation",
    "Box",
    "DEFAULT_EXTENSIONS",
    "LAYOUTS",
    "MASK_FOLDER_NAMES",
    "NORMAL_NAMES",
    "AnomalyDataConfig",
    "AnomalyImageDataset",
    "AnomalySplit",
    "ImageRecord",
    "detect_channels",
    "discover_records",
    "load_image",
    "load_mask",
    "mask_gap_notes",
    "make_split",
    "read_annotation",
    "read_split",
    "split_records",
    "write_split",
]
