"""The size of the 2nd-order Taylor feature map (pure Python, no torch).

One home for a number that two parts need: the linear-attention kernel
(``kernels/linear_attention.py``, which builds the map) and the cost model (``cost``, which counts
a linear layer's recurrent state), so that neither imports the other.
"""


def taylor_feature_count(feature_dim: int = 16, compact: bool = True) -> int:
    """Features of the 2nd-order Taylor map of ``feature_dim``-dimensional inputs: 1 + d +
    d(d+1)/2 compact (the symmetric outer product's upper triangle; 153 for d = 16), else
    1 + d + d^2 (273)."""
    if feature_dim < 1:
        raise ValueError(f"feature_dim must be >= 1, got {feature_dim}")
    if compact:
        return 1 + feature_dim + feature_dim * (feature_dim + 1) // 2
    return 1 + feature_dim + feature_dim * feature_dim
