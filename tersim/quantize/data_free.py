"""Data-free activation ranges from the FP32 model's batch-norm statistics.

A conv/linear followed by batch norm has, per output channel, the BN output's mean ``beta`` and standard
deviation ``|gamma|`` (the frontend keeps the folded BN's parameters in ``Node.bn``). From the
input (assumed standardised: mean 0, std 1 per channel) these per-channel Gaussian moments are propagated
through the graph (independent inputs: a layer without BN gets ``sum W * mean`` and ``sqrt(sum W**2 * var)``;
relu: rectified-Gaussian moments; add: sums; pooling and flatten keep them), and every tensor's range is
``max over channels of |mean| + n_std * std`` (relu/clamp: of the clipped interval). No input is touched.
"""
from __future__ import annotations

import math

import numpy as np

from tersim.frontend.ir import Graph, Node

INPUT_MEAN, INPUT_STD = 0.0, 1.0


def _phi(z: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _cdf(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2.0))) if z.size else z


def _rectified(m: np.ndarray, s: np.ndarray, lo: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of max(X, lo) for X ~ N(m, s**2), per channel."""
    s = np.maximum(s, 1e-12)
    z = (m - lo) / s
    cdf, pdf = _cdf(z), _phi(z)
    mean = lo + (m - lo) * cdf + s * pdf
    second = ((m - lo) ** 2 + s ** 2) * cdf + (m - lo) * s * pdf
    var = np.maximum(second - (mean - lo) ** 2, 0.0)
    return mean, np.sqrt(var)


def _weighted(node: Node, m: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w = node.weight.astype(np.float64)
    if node.op == "linear":
        w4 = w[:, :, None, None]
    else:
        w4 = w
    cout, cin_g = w4.shape[:2]
    groups = node.attrs.get("groups", 1) if node.op == "conv2d" else 1
    m_in, v_in = m.reshape(groups, cin_g), (s ** 2).reshape(groups, cin_g)
    g = np.arange(cout) // (cout // groups)
    mean = np.einsum("oc,oc->o", w4.sum((2, 3)), m_in[g])
    var = np.einsum("oc,oc->o", (w4 ** 2).sum((2, 3)), v_in[g])
    if node.bias is not None:
        mean = mean + node.bias
    return mean, np.sqrt(var)


def bn_max_abs(graph: Graph, n_std: float) -> dict[str, float]:
    """Every node's estimated max |value| (the role calibration's max |value| plays), from BN statistics."""
    moments: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    max_abs: dict[str, float] = {}
    for node in graph.nodes:
        ins = [moments[i] for i in node.inputs]
        if node.op == "input":
            c = node.shape[0] if node.shape else 1
            m, s = np.full(c, INPUT_MEAN), np.full(c, INPUT_STD)
        elif node.op in ("conv2d", "linear"):
            if node.bn is not None:   # the BN output: mean beta, std |gamma| per channel
                m, s = np.asarray(node.bn["beta"], np.float64), np.abs(np.asarray(node.bn["gamma"], np.float64))
            else:
                m, s = _weighted(node, *ins[0])
        elif node.op == "relu":
            hi = ins[0][0] + n_std * ins[0][1]
            m, s = _rectified(*ins[0])
            moments[node.name] = (m, s)
            max_abs[node.name] = float(np.max(np.maximum(hi, 0.0), initial=0.0))
            continue
        elif node.op == "clamp":
            lo, hi = node.attrs.get("min"), node.attrs.get("max")
            m, s = _rectified(*ins[0], lo=lo) if lo is not None else ins[0]
            top = np.abs(ins[0][0]) + n_std * ins[0][1]
            bound = float(np.max(top, initial=0.0))
            if hi is not None or lo is not None:
                bound = min(bound, max(abs(v) for v in (lo, hi) if v is not None))
            moments[node.name], max_abs[node.name] = (m, s), bound
            continue
        elif node.op == "add":
            m = sum(i[0] for i in ins)
            s = np.sqrt(sum(i[1] ** 2 for i in ins))
        elif node.op == "flatten":
            src = graph.node(node.inputs[0]).shape
            rep = int(np.prod(src[1:])) if len(src) > 1 else 1
            m, s = np.repeat(ins[0][0], rep), np.repeat(ins[0][1], rep)
        elif node.op == "concat":
            m, s = np.concatenate([i[0] for i in ins]), np.concatenate([i[1] for i in ins])
        else:   # pooling keeps the per-channel moments
            m, s = ins[0]
        moments[node.name] = (m, s)
        max_abs[node.name] = float(np.max(np.abs(m) + n_std * s, initial=0.0))
    return max_abs


def activation_ranges(graph: Graph, hw, calibration: list[np.ndarray],
                      data_given: bool) -> tuple[dict[str, float] | None, str]:
    """The activation ranges `quantization.act_ranges` asks for and a sentence saying where they came from:
    None (quantize_graph calibrates on `calibration`) or every node's max |value| from the BN statistics.
    auto: BN statistics when no data was given (the inputs would be synthetic), calibration otherwise."""
    q = hw.quantization
    if q.act_ranges == "bn_stats" or (q.act_ranges == "auto" and not data_given):
        return bn_max_abs(graph, q.act_range_std), f"BN statistics (mean + {q.act_range_std:g} std)"
    return None, f"calibration on {sum(len(b) for b in calibration)} inputs"
