"""The retrieval job's data in one import: records and discovery, the ID-grouped split, the dataset.

Each part lives in its own module: :mod:`fabml.data.retrieval_discovery` (class folders or a list
file -> records with object IDs; bad-input checks, ``min_image_size``, ``class_names``),
:mod:`fabml.data.retrieval_split` (train/val/test by ID, stratified by class, written to CSV files
and checked for leaks on load) and :mod:`fabml.data.retrieval_dataset` (records -> ``[3, S, S]``
tensors, with the training augmentations). The P×K batch sampler is :mod:`fabml.data.pk_sampler`.
"""

from fabml.data.pk_sampler import PKBatchSampler
from fabml.data.retrieval_dataset import RetrievalImageDataset, train_transform
from fabml.data.retrieval_discovery import (
    DiscoveredRecords,
    RetrievalRecord,
    discover_records,
    image_size,
    natural_key,
)
from fabml.data.retrieval_split import RetrievalSplit, make_retrieval_split, read_retrieval_split, split_paths

__all__ = [
    "DiscoveredRecords",
    "PKBatchSampler",
    "RetrievalImageDataset",
    "RetrievalRecord",
    "RetrievalSplit",
    "discover_records",
    "image_size",
    "make_retrieval_split",
    "natural_key",
    "read_retrieval_split",
    "split_paths",
    "train_transform",
]
