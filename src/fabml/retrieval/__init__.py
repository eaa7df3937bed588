"""Retrieval-based classification: a backbone + ArcFace embedding model, ID-grouped splits, P×K batches,
a vector index of reference images, Recall@k, and open-set prediction (``fabml retrieval``)."""
