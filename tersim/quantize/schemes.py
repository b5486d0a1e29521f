"""Data-free k-bit weight schemes beside FGQ ternary: uniform, uniform_asym, pow2, kmeans (+ class clustering).

Every scheme maps a weight tensor onto the int8-weight layer path of the numerics contract: integer codes
in [-127, 127] (int8, the weight's shape) and one float scale per output channel, so the same Numba kernels
and torch integer reference run every scheme bit-exactly. What a scheme decides is which integers the
codes may take and how the scales are found:

* ``uniform``: symmetric, ``s = max|w| / qmax`` with ``qmax = 2**(k-1) - 1``, codes
  ``clamp(rint(w * (1/s)), -qmax, qmax)`` computed in float32 (PyTorch's fake-quant arithmetic, so the
  dequantized weight ``code * s`` equals ``torch.fake_quantize_per_{channel,tensor}_affine``; tested).
* ``uniform_asym``: ``q`` in ``[0, 2**k - 1]`` with zero point ``z`` (torch's observer rule
  ``z = clamp(0 - rint(min / s))``, ``s = (max - min) / (2**k - 1)``, range widened to include 0). The
  datapath gets the codes ``q - z``: the integer conv computes ``sum((q - z) * x)`` and the dequantized
  weight is ``(q - z) * s``, exactly torch's. ``q - z`` needs k+1 signed bits, so k <= 7 here.
* ``pow2``: sign and power-of-two magnitudes: ``E = min(2**(k-1) - 1, 7)`` exponents (7: an 8-bit code
  holds 2**0..2**6), ``s = max|w| / 2**(E-1)``, ``r = |w| / s``: code 0 if ``r < 0.5``, else
  ``sign * 2**clip(rint(log2 r), 0, E-1)``. The multiply is a shift by the exponent.
* ``kmeans``: a codebook of ``2**k`` values by Lloyd's algorithm on the 1-D weights (initialised at the
  quantiles: deterministic), then stored in 8-bit fixed point: ``s = max|c| / 127``, level ``rint(c / s)``;
  the codes are the levels of the weights' nearest centroids (a codebook lookup, then an 8-bit multiply).

Granularity: ``tensor`` (one scale / codebook per layer) or ``channel`` (per output channel). Class
clustering (``cluster_rows``) gives the classifier's row clusters their own scale / codebook.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SCHEMES = ("fgq_ternary", "uniform", "uniform_asym", "pow2", "kmeans")
KBIT_SCHEMES = SCHEMES[1:]
GRANULARITIES = ("tensor", "channel")
POW2_MAX_EXPONENTS = 7     # int8 codes hold 2**0 .. 2**6
ASYM_MAX_BITS = 7          # q - z needs k+1 signed bits; the datapath's codes are 8-bit
KMEANS_ITERATIONS = 50
CODE_MAX = 127


@dataclass(frozen=True)
class SchemeCodes:
    """One layer under a k-bit scheme: int8 codes (weight shape), float32 scale per output channel, and the
    zero point per channel (uniform_asym; 0 elsewhere) that was folded into the codes."""

    codes: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    segments: int = 1     # row sets with their own scale / codebook (tensor 1, channel Cout, clusters C)


FGQ_ONLY = {"group_layout": "channel", "scales": "one"}   # FGQ variant options and the value k-bit schemes take


def scheme_conflict(scheme: str, bits: int, group_layout: str = "channel", scales: str = "one") -> str | None:
    """Why a (scheme, weight_bits, FGQ variant) combination cannot run, or None. The FGQ group layout and
    two scales per group shape ternary groups; a k-bit scheme has one scale per output channel (or cluster),
    so it refuses them rather than silently ignoring them."""
    if scheme not in SCHEMES:
        return f"unknown weight scheme {scheme!r}; choose one of {SCHEMES}"
    if not 2 <= int(bits) <= 8:
        return f"weight_bits must be in [2, 8], got {bits}"
    if scheme == "uniform_asym" and bits > ASYM_MAX_BITS:
        return (f"uniform_asym at {bits} bits needs {bits + 1}-bit signed codes (q - zero_point); the integer "
                f"datapath holds 8-bit codes: use weight_bits <= {ASYM_MAX_BITS}")
    if scheme != "fgq_ternary":
        for name, value in (("group_layout", group_layout), ("scales", scales)):
            if value != FGQ_ONLY[name]:
                return (f"{name}: {value} applies to fgq_ternary groups only; the {scheme} scheme has one scale per "
                        f"output channel (use {name}: {FGQ_ONLY[name]})")
    return None


def check_scheme(scheme: str, bits: int) -> None:
    conflict = scheme_conflict(scheme, bits)
    if conflict:
        raise ValueError(conflict)


def levels(scheme: str, bits: int) -> int:
    """Distinct code values the scheme can produce at `bits` (what the analysis compares 'used' against)."""
    if scheme == "uniform":
        return 2 ** bits - 1
    if scheme == "pow2":
        return 2 * min(2 ** (bits - 1) - 1, POW2_MAX_EXPONENTS) + 1
    return 2 ** bits


# --- one segment (a tensor, a channel or a cluster of rows) -> integer codes and one scale --------------
def _uniform(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.float32, int]:
    qmax = 2 ** (bits - 1) - 1
    top = float(np.max(np.abs(w))) if w.size else 0.0
    if top == 0.0:
        return np.zeros(w.shape, np.int64), np.float32(0.0), 0
    s = np.float32(top / qmax)
    inv = np.float32(1.0) / s
    q = np.clip(np.rint(w * inv), -qmax, qmax)
    return q.astype(np.int64), s, 0


def _uniform_asym(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.float32, int]:
    qmax = 2 ** bits - 1
    lo, hi = (min(float(w.min()), 0.0), max(float(w.max()), 0.0)) if w.size else (0.0, 0.0)
    if hi == lo:
        return np.zeros(w.shape, np.int64), np.float32(0.0), 0
    s = np.float32((hi - lo) / qmax)
    z = int(np.clip(0 - np.rint(np.float32(lo) / s), 0, qmax))
    inv = np.float32(1.0) / s
    q = np.clip(np.rint(w * inv) + z, 0, qmax)
    return q.astype(np.int64) - z, s, z


def _pow2(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.float32, int]:
    exps = min(2 ** (bits - 1) - 1, POW2_MAX_EXPONENTS)
    top = float(np.max(np.abs(w))) if w.size else 0.0
    if top == 0.0:
        return np.zeros(w.shape, np.int64), np.float32(0.0), 0
    s = np.float32(top / 2 ** (exps - 1))
    r = np.abs(w.astype(np.float64)) / float(s)
    with np.errstate(divide="ignore"):
        e = np.clip(np.rint(np.log2(np.where(r > 0, r, 1.0))), 0, exps - 1).astype(np.int64)
    q = np.where(r < 0.5, 0, np.sign(w).astype(np.int64) << e)
    return q.astype(np.int64), s, 0


def lloyd_1d(values: np.ndarray, k: int, iterations: int = KMEANS_ITERATIONS) -> np.ndarray:
    """Sorted centroids of a 1-D k-means (Lloyd), initialised at the (i + 0.5)/k quantiles: deterministic."""
    v = np.sort(values.astype(np.float64).ravel())
    uniq = np.unique(v)
    if uniq.size <= k:
        return uniq
    c = np.quantile(v, (np.arange(k) + 0.5) / k)
    prefix = np.concatenate(([0.0], np.cumsum(v)))
    for _ in range(iterations):
        cuts = np.searchsorted(v, (c[1:] + c[:-1]) / 2)           # cluster j holds v[cuts[j-1]:cuts[j]]
        bounds = np.concatenate(([0], cuts, [v.size]))
        counts = np.diff(bounds)
        sums = prefix[bounds[1:]] - prefix[bounds[:-1]]
        new = np.where(counts > 0, sums / np.maximum(counts, 1), c)
        if np.array_equal(new, c):
            break
        c = np.sort(new)
    return c


def _kmeans(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.float32, int]:
    if not w.size or not np.any(w):
        return np.zeros(w.shape, np.int64), np.float32(0.0), 0
    centroids = lloyd_1d(w, 2 ** bits)
    top = float(np.max(np.abs(centroids)))
    s = np.float32(top / CODE_MAX)
    level = np.clip(np.rint(centroids / float(s)), -CODE_MAX, CODE_MAX).astype(np.int64)
    mids = (centroids[1:] + centroids[:-1]) / 2
    idx = np.searchsorted(mids, w.astype(np.float64), side="left")
    return level[idx], s, 0


_SEGMENT = {"uniform": _uniform, "uniform_asym": _uniform_asym, "pow2": _pow2, "kmeans": _kmeans}


def cluster_rows(rows: np.ndarray, clusters: int, iterations: int = KMEANS_ITERATIONS, seed: int = 0) -> np.ndarray:
    """Cluster label of every row (k-means, Lloyd, on the raw row vectors; k-means++ seeding from a fixed
    seed, so deterministic). Fewer distinct rows than clusters: each row its own cluster."""
    x = rows.reshape(rows.shape[0], -1).astype(np.float64)
    n = x.shape[0]
    k = min(int(clusters), n)
    if k <= 1:
        return np.zeros(n, np.int64)
    rng = np.random.default_rng(seed)
    centers = [x[rng.integers(n)]]
    for _ in range(1, k):
        d2 = np.min(((x[:, None, :] - np.array(centers)[None]) ** 2).sum(-1), axis=1)
        total = d2.sum()
        centers.append(x[rng.choice(n, p=d2 / total)] if total > 0 else x[rng.integers(n)])
    c = np.array(centers)
    labels = np.zeros(n, np.int64)
    for _ in range(iterations):
        new = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
        if _ and np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            if np.any(labels == j):
                c[j] = x[labels == j].mean(0)
    return labels


def quantize_scheme(weight: np.ndarray, scheme: str, bits: int, granularity: str = "channel",
                    row_clusters: np.ndarray | None = None) -> SchemeCodes:
    """Codes, per-output-channel float32 scales and zero points of one conv (Cout, Cin/g, kh, kw) or linear
    (out, in) weight. `row_clusters` (a label per output channel) overrides `granularity`: every cluster of
    rows is quantized as one tensor."""
    check_scheme(scheme, bits)
    if scheme == "fgq_ternary":
        raise ValueError("fgq_ternary is quantized by tersim.quantize.fgq")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    w = np.asarray(weight, np.float32)
    if not np.isfinite(w).all():
        raise ValueError("weight contains NaN or infinite values")
    cout = w.shape[0]
    rows = w.reshape(cout, -1)
    if row_clusters is not None:
        labels = np.asarray(row_clusters)
    elif granularity == "tensor":
        labels = np.zeros(cout, np.int64)
    else:
        labels = np.arange(cout)
    codes = np.zeros(rows.shape, np.int64)
    scale = np.zeros(cout, np.float32)
    zero = np.zeros(cout, np.int64)
    fn = _SEGMENT[scheme]
    for label in np.unique(labels):
        sel = labels == label
        q, s, z = fn(rows[sel], int(bits))
        codes[sel], scale[sel], zero[sel] = q, s, z
    assert np.abs(codes).max(initial=0) <= CODE_MAX
    return SchemeCodes(codes.astype(np.int8).reshape(w.shape), scale, zero, int(np.unique(labels).size))


def dequantize_scheme(codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The float32 weight the codes stand for: ``code * scale`` of its output channel, in float32 (as a
    float32 framework computes it)."""
    c = np.asarray(codes)
    return (c.astype(np.float32) * np.asarray(scale, np.float32).reshape(-1, *([1] * (c.ndim - 1)))).astype(np.float32)


# --- a graph node under the run's scheme: the dict tersim.quantize.graph packs into a QuantizedLayer ----------
def scheme_layer(weight: np.ndarray, is_linear: bool, scheme: str, bits: int, granularity: str, scale_bits: int,
                 row_clusters: np.ndarray | None = None) -> dict:
    """Codes and fixed-point per-channel alphas of one layer on the int8-weight path (one alpha group of Cin
    channels per kernel position, the numerics contract's int8 datapath), plus the scheme's name and bits."""
    from tersim.quantize.fgq import fixed_point_alpha, weight_stats

    q = quantize_scheme(weight, scheme, bits, granularity, row_clusters)
    w4 = weight if weight.ndim == 4 else weight[:, :, None, None]
    cout, cin_g, kh, kw = w4.shape
    alpha = np.broadcast_to(q.scale.astype(np.float64)[:, None, None, None], (cout, kh, kw, 1)).copy()
    alpha_q, alpha_frac = fixed_point_alpha(alpha, scale_bits)
    stats = weight_stats(weight, q.codes, alpha, max(1, cin_g))
    if is_linear:
        alpha_q = alpha_q.reshape(cout, -1)
    return dict(weight_kind="int8", group_size=max(1, cin_g), codes=q.codes, alpha=alpha, alpha_q=alpha_q,
                alpha_frac=alpha_frac, group_layout="channel", scales=1,
                stats={k: float(v) for k, v in stats.items()}, scheme=scheme, weight_bits=int(bits),
                segments=q.segments)


def scheme_layer_names(graph, hw, int8_layers: set[str]) -> set[str]:
    """Weighted layers the run's k-bit scheme quantizes: all but the int8 first/last ones; with
    class_clusters >= 1 the last layer too (1: one scale for the whole layer). Empty for fgq_ternary."""
    q = hw.quantization
    if q.scheme == "fgq_ternary":
        return set()
    weighted = graph.weighted()
    names = {n.name for n in weighted} - int8_layers
    if q.class_clusters >= 1 and weighted:
        names.add(weighted[-1].name)
    return names


def scheme_weights(node, weight: np.ndarray, hw, last: bool) -> dict:
    """`scheme_layer` of one node under the run's scheme (hw.quantization); `last`: the classifier, whose rows
    are clustered when class_clusters >= 1 (class clustering). `weight`: node.weight or an equalized copy."""
    q = hw.quantization
    clusters = cluster_rows(weight, q.class_clusters) if last and q.class_clusters >= 1 else None
    return scheme_layer(weight, node.op == "linear", q.scheme, q.weight_bits, q.granularity,
                        hw.group_scaling.scale_bits, clusters)


def layer_weight_bytes(layer, scale_bits: int) -> int:
    """Stored bytes of one layer's weights: its codes at their bits plus its alpha table (and, for kmeans,
    the 2**k 8-bit codebook levels)."""
    codes = layer.codes
    bits = layer.weight_bits or (2 if layer.weight_kind == "ternary" else 8)
    extra = 2 ** bits * layer.segments if layer.scheme == "kmeans" else 0
    n_alphas = layer.alpha_q.size if layer.weight_kind == "ternary" else codes.shape[0]
    return math.ceil(codes.size * bits / 8) + math.ceil(n_alphas * scale_bits / 8) + extra


def scheme_summary(hw, qgraph) -> dict:
    """The scheme columns of a run's summary row."""
    q = hw.quantization
    kbit = q.scheme != "fgq_ternary"
    return {"scheme": q.scheme, "weight_bits": q.weight_bits if kbit else 2,
            "granularity": q.granularity if kbit else "group",
            "class_clusters": q.class_clusters if kbit else 0,
            "act_range_source": getattr(qgraph, "act_range_source", "calibration")}
