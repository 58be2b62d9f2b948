"""Post-hoc quantization of chunked VAE latents: W2/euclidean k-means and geodesic k-medoids."""

from geovq.quant.codebook import (
    Codebook,
    QuantizerFit,
    assign_codes,
    chunk_latents,
    codeword_latents,
    fit_codebook,
)
from geovq.quant.distances import METRICS, metric_features, nearest_center, sq_distances, w2_sq
from geovq.quant.geodesic import (
    EDGE_WEIGHTS,
    GeodesicFit,
    assign_geodesic,
    connect_components,
    geodesic_kmedoids,
    knn_graph,
)
from geovq.quant.kmeans import KMeansResult, kmeans_plus_plus

# `kmeans` itself is imported from geovq.quant.kmeans: a re-export here would hide the module.

__all__ = [
    "EDGE_WEIGHTS",
    "METRICS",
    "Codebook",
    "GeodesicFit",
    "KMeansResult",
    "QuantizerFit",
    "assign_codes",
    "assign_geodesic",
    "chunk_latents",
    "codeword_latents",
    "connect_components",
    "fit_codebook",
    "geodesic_kmedoids",
    "kmeans_plus_plus",
    "knn_graph",
    "metric_features",
    "nearest_center",
    "sq_distances",
    "w2_sq",
]
