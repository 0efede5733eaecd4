"""Layers: the general :class:`IntegralTransform` and exact converters; the proposals
(``samplers``) and point-cloud neighbourhoods (``neighbors``) of the sampled evaluation."""
from . import convert, neighbors, samplers  # noqa: F401
from .convert import *  # noqa: F401,F403  (the converters, listed once in convert.__all__)
from .neighbors import knn_graph, radius_graph
from .transform import IntegralTransform

__all__ = ["IntegralTransform", "knn_graph", "radius_graph", *convert.__all__]
