"""Layers: the general :class:`IntegralTransform` and exact converters. ``samplers``,
``neighbors`` (the sampled evaluation's proposals and point-cloud neighbourhoods) and
``feature_maps`` (the low-rank maps) live in their strategies' packages, itnet_ext.sparse and
itnet_ext.lowrank, and are re-exported here under their public paths."""
from . import convert, feature_maps, neighbors, samplers  # noqa: F401
from .convert import *  # noqa: F401,F403  (the converters, listed once in convert.__all__)
from .neighbors import knn_graph, radius_graph
from .transform import IntegralTransform

__all__ = ["IntegralTransform", "knn_graph", "radius_graph", *convert.__all__]
