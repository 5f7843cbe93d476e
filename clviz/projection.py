"""Features wider than the picture: a PCA projection onto the plane.

Frames draw 2-D features as they are and 3-D features in a 3-D view; for
feat_dim > 3 they draw the first two principal components. Metrics always
use the full-dimensional features (metrics.py).
"""

from dataclasses import dataclass

import numpy as np

# Each component's sign is fixed by this direction (a seeded random unit vector per
# component), so one epoch's projection does not flip against the next's.
SIGN_SEED = 0


@dataclass(frozen=True)
class Projection:
    """x -> (x - mean) @ components.T: (N, D) -> (N, k)."""
    mean: np.ndarray  # (D,)
    components: np.ndarray  # (k, D), orthonormal rows
    explained: float  # share of the fitted features' variance the k components keep, 0..1

    def __call__(self, points: np.ndarray) -> np.ndarray:
        return (np.asarray(points, dtype=np.float64) - self.mean) @ self.components.T

    def directions(self, vectors: np.ndarray) -> np.ndarray:
        """Vectors such as class weights, which have no offset: only the rotation applies."""
        return np.asarray(vectors, dtype=np.float64) @ self.components.T


def fit_pca(features: np.ndarray, k: int = 2) -> Projection:
    """The top-k principal components of `features` (N, D), from the SVD of the
    centred data; each component's sign makes its dot product with a fixed random
    vector positive, so projections of nearby epochs agree in sign."""
    x = np.asarray(features, dtype=np.float64)
    mean = x.mean(axis=0)
    _, singular, vt = np.linalg.svd(x - mean, full_matrices=False)
    components = vt[:k]
    reference = np.random.default_rng(SIGN_SEED).standard_normal((k, x.shape[1]))
    signs = np.where(np.sum(components * reference, axis=1) < 0, -1.0, 1.0)
    variance = singular ** 2
    explained = float(variance[:k].sum() / max(variance.sum(), 1e-300))
    return Projection(mean=mean, components=components * signs[:, None], explained=explained)
