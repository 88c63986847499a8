"""Backbone token features of a dataset: encoding them once, and the on-disk cache."""

from picoalign.features.dataset import SourceImages, dataset_features
from picoalign.features.encode import default_cache_dir, encode_dataset
from picoalign.features.store import FeatureSet, TokenFeatures, load_features, save_features

__all__ = [
    "FeatureSet",
    "SourceImages",
    "TokenFeatures",
    "dataset_features",
    "default_cache_dir",
    "encode_dataset",
    "load_features",
    "save_features",
]
