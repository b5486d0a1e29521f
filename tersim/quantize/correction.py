"""Accuracy recovery without training (`quantization.correction`), folded into weights and biases.

All three change only the float alphas (a per-output-channel factor, the codes stay) and the float biases the
integer datapath is built from, so the hardware, the counts and the cycles are unchanged (zero hardware
cost) and `verify` stays bit-exact:

* ``bn_reestimate``: after ternarizing, each BatchNorm folded into a conv/linear (kept by the frontend on
  ``Node.bn``) has its statistics re-estimated on unlabelled calibration inputs, layer by layer in graph
  order (each layer sees the already-corrected layers before it, FP32 activations), and is folded again:
  with the folded quantized conv's output ``z_f = W_hat_f x`` (mean m, variance v per channel) and the old
  fold ``s = gamma / sqrt(var + eps)``, BN sees ``z = z_f / s + b``, so the new fold is
  ``s' = gamma / sqrt(v / s^2 + eps)``: alphas are multiplied by ``r = s' / s`` and the bias becomes
  ``beta - r * m``.
* ``bias_correction`` (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias
  Correction"): the quantization error ``eps = W_hat - W`` shifts each output's mean by ``eps @ E[x]``;
  E[x] comes from the FP32 model's BN statistics: a BN output channel is taken as N(beta, gamma^2), pushed
  through relu / clamp (clipped normal), add (sums of independent normals), pooling and flatten (mean kept;
  max pooling's mean is underestimated by this). Layers whose input mean is unknown (the network input, a
  conv without BN) are left alone. The bias is decreased by ``eps @ E[x]``.
* ``equalize_bias_correction``: cross-layer equalization (same paper) before quantizing, then bias
  correction. For conv1 -> relu -> conv2 chains (conv1's output feeds only the relu, the relu only conv2)
  output channel i of conv1 is divided by ``s_i = sqrt(r1_i / r2_i)`` (r: the channel's weight range in
  conv1 and in conv2) and conv2's input channel i multiplied by it; relu(x / s) = relu(x) / s, so the float
  network is unchanged. Repeated until the scales settle. clamp (ReLU6) is not scale-equivariant, so chains
  through a clamp are not equalized.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from tersim.frontend.float_exec import execute_float
from tersim.frontend.ir import Graph, Node
from tersim.quantize.fgq import dequantize_variant, fixed_point_alpha

CORRECTIONS = ("none", "bn_reestimate", "bias_correction", "equalize_bias_correction")
CALIB_MAX_SAMPLES = 1024   # BN statistics converge long before; bounds the cost of the sequential passes
EQUALIZE_ROUNDS = 20


# ----------------------------------------------------------------------------- helpers
def _dequantized(q: dict) -> np.ndarray:
    return np.asarray(dequantize_variant(q["codes"], q["alpha"], q["group_size"], q["group_layout"],
                                         "two" if q["scales"] == 2 else "one"), np.float64)


def _bias(node: Node, q: dict) -> np.ndarray:
    b = q.get("bias", node.bias)
    return np.zeros(node.weight.shape[0]) if b is None else np.asarray(b, np.float64)


def _rescale(q: dict, r: np.ndarray, scale_bits: int) -> None:
    """Multiply every alpha of output channel o by r[o] (> 0) and redo the fixed point."""
    alpha = np.asarray(q["alpha"], np.float64) * r.reshape(-1, *[1] * (np.ndim(q["alpha"]) - 1))
    alpha_q, alpha_frac = fixed_point_alpha(alpha, scale_bits)
    q.update(alpha=alpha, alpha_q=alpha_q.reshape(np.shape(q["alpha_q"])), alpha_frac=alpha_frac)


def _with_weights(graph: Graph, weights: dict[str, dict]) -> Graph:
    from tersim.quantize.graph import corrected_graph

    return corrected_graph(graph, weights)


def _preactivation(node: Node, x: np.ndarray, w: np.ndarray) -> torch.Tensor:
    """The layer's output without bias: (B, C, ...) float64."""
    xt, wt = torch.from_numpy(np.asarray(x, np.float64)), torch.from_numpy(w.reshape(node.weight.shape))
    if node.op == "linear":
        return xt @ wt.T
    a = node.attrs
    return F.conv2d(xt, wt, None, tuple(a["stride"]), tuple(a["padding"]), tuple(a["dilation"]), a["groups"])


# ----------------------------------------------------------------------------- BN re-estimation
def bn_reestimate(graph: Graph, weights: dict[str, dict], calib: np.ndarray, scale_bits: int) -> None:
    """Re-estimate and re-fold every folded BN on `calib` after ternarization (in place; see module doc)."""
    x = np.asarray(calib[:CALIB_MAX_SAMPLES], np.float32)
    for node in graph.weighted():
        bn, q = node.bn, weights[node.name]
        if bn is None:
            continue
        outputs = execute_float(_with_weights(graph, weights), x, dtype=np.float32, return_all=True)
        z = _preactivation(node, outputs[node.inputs[0]], _dequantized(q))
        dims = [d for d in range(z.dim()) if d != 1]
        m, v = z.mean(dims).numpy(), z.var(dims, unbiased=False).numpy()
        s = bn["gamma"] / np.sqrt(bn["var"] + bn["eps"])
        ok = s != 0
        s_new = np.where(ok, bn["gamma"] / np.sqrt(v / np.where(ok, s, 1.0) ** 2 + bn["eps"]), 0.0)
        r = np.where(ok, s_new / np.where(ok, s, 1.0), 1.0)
        _rescale(q, r, scale_bits)
        q["bias"] = np.where(ok, bn["beta"] - r * m, _bias(node, q)).astype(np.float32)


# ----------------------------------------------------------------------------- data-free input statistics
def _phi(t: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)


def _cdf(t: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf)(t / math.sqrt(2.0)))


def _mean_max(mu: np.ndarray, sd: np.ndarray, c: float) -> np.ndarray:
    """E[max(z, c)] for z ~ N(mu, sd^2)."""
    sd = np.maximum(sd, 1e-12)
    d = (mu - c) / sd
    return c + sd * _phi(d) + (mu - c) * _cdf(d)


def _clipped(mu: np.ndarray, sd: np.ndarray, lo: float | None, hi: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(mean, approximate std) of clip(z, lo, hi): exact mean; std scaled by the unclipped probability."""
    mean = mu.copy()
    keep = np.ones_like(mu)
    sdp = np.maximum(sd, 1e-12)
    if lo is not None:
        mean = _mean_max(mu, sd, lo)
        keep = keep - _cdf((lo - mu) / sdp)
    if hi is not None:
        mean = mean - _mean_max(mu, sd, hi) + hi
        keep = keep - (1 - _cdf((hi - mu) / sdp))
    return mean, sd * np.clip(keep, 0.0, 1.0)


def expected_inputs(graph: Graph, bn_scale: dict[str, np.ndarray] | None = None
                    ) -> dict[str, tuple[np.ndarray, np.ndarray] | None]:
    """Per node: (mean, std) of every output channel/feature under the FP32 model's BN statistics, or None
    where unknown. `bn_scale`: per node, the factor equalization divided its output channels by."""
    stats: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}
    for node in graph.nodes:
        ins = [stats.get(i) for i in node.inputs]
        out = None
        if node.op in ("conv2d", "linear"):
            if node.bn is not None:
                s = (bn_scale or {}).get(node.name, 1.0)
                out = (node.bn["beta"] / s, np.abs(node.bn["gamma"]) / s)
        elif None in ins or not ins:
            out = None
        elif node.op == "relu":
            out = _clipped(*ins[0], 0.0, None)
        elif node.op == "clamp":
            out = _clipped(*ins[0], node.attrs.get("min"), node.attrs.get("max"))
        elif node.op == "add":
            out = (ins[0][0] + ins[1][0], np.sqrt(ins[0][1] ** 2 + ins[1][1] ** 2))
        elif node.op in ("max_pool2d", "avg_pool2d", "adaptive_avg_pool2d"):
            out = ins[0]
        elif node.op == "flatten":
            src = graph.node(node.inputs[0]).shape
            rep = int(np.prod(src[1:])) if len(src) > 1 else 1
            out = (np.repeat(ins[0][0], rep), np.repeat(ins[0][1], rep))
        elif node.op == "concat" and node.attrs.get("dim") == 1:
            out = (np.concatenate([i[0] for i in ins]), np.concatenate([i[1] for i in ins]))
        stats[node.name] = out
    return stats


def bias_correct(graph: Graph, weights: dict[str, dict], float_weights: dict[str, np.ndarray],
                 bn_scale: dict[str, np.ndarray] | None = None) -> None:
    """Subtract eps @ E[x] from every layer's bias whose input mean is known (in place)."""
    stats = expected_inputs(graph, bn_scale)
    for node in graph.weighted():
        st = stats.get(node.inputs[0])
        if st is None:
            continue
        q = weights[node.name]
        eps = _dequantized(q).reshape(node.weight.shape) - np.asarray(float_weights[node.name], np.float64)
        mean_in = st[0]
        if node.op == "linear":
            shift = eps @ mean_in
        else:
            groups = node.attrs["groups"]
            cout, cin_g = eps.shape[:2]
            per_in = eps.sum(axis=(2, 3))                                   # (Cout, cin_g); padding ignored
            m = mean_in.reshape(groups, cin_g)[np.arange(cout) // (cout // groups)]
            shift = (per_in * m).sum(axis=1)
        q["bias"] = (_bias(node, q) - shift).astype(np.float32)


# ----------------------------------------------------------------------------- cross-layer equalization
def _equalizable_pairs(graph: Graph) -> list[tuple[Node, Node]]:
    pairs = []
    for node in graph.nodes:
        if node.op != "conv2d":
            continue
        users = graph.consumers(node.name)
        if len(users) != 1 or users[0].op != "relu" or node.name == graph.output:
            continue
        nxt = graph.consumers(users[0].name)
        if len(nxt) == 1 and nxt[0].op == "conv2d":
            pairs.append((node, nxt[0]))
    return pairs


def _in_channel_view(w2: np.ndarray, groups: int, channels: int) -> list[np.ndarray]:
    """Index arrays into w2 (Cout, cin_g, kh, kw) of every input channel i: the weights it is multiplied by."""
    cout, cin_g = w2.shape[:2]
    cout_g = cout // groups
    return [(slice((i // cin_g) * cout_g, (i // cin_g + 1) * cout_g), i % cin_g) for i in range(channels)]


def equalized_weights(graph: Graph) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Equalized float (weight, bias) of the layers cross-layer equalization touches, plus the per-channel
    factors their outputs were divided by under key '__scale__<name>' (for the BN statistics)."""
    pairs = _equalizable_pairs(graph)
    w = {n.name: np.asarray(n.weight, np.float64).copy() for n in graph.weighted()}
    b = {n.name: None if n.bias is None else np.asarray(n.bias, np.float64).copy() for n in graph.weighted()}
    total = {n.name: np.ones(n.weight.shape[0]) for n in graph.weighted()}
    for _ in range(EQUALIZE_ROUNDS):
        worst = 0.0
        for a, c in pairs:
            w1, w2 = w[a.name], w[c.name]
            views = _in_channel_view(w2, c.attrs["groups"], w1.shape[0])
            r1 = np.abs(w1).reshape(w1.shape[0], -1).max(axis=1)
            r2 = np.array([np.abs(w2[v]).max() for v in views])
            ok = (r1 > 0) & (r2 > 0)
            s = np.where(ok, np.sqrt(r1 / np.where(ok, r2, 1.0)), 1.0)
            w1 /= s.reshape(-1, 1, 1, 1)
            if b[a.name] is not None:
                b[a.name] /= s
            for i, v in enumerate(views):
                w2[v] *= s[i]
            total[a.name] *= s
            worst = max(worst, float(np.max(np.abs(np.log(s)))))
        if worst < 1e-6:
            break
    out: dict = {name: (w[name].astype(np.float32), None if b[name] is None else b[name].astype(np.float32))
                 for a, c in pairs for name in (a.name, c.name)}
    out.update({f"__scale__{a.name}": (total[a.name], None) for a, _ in pairs})
    return out


# ----------------------------------------------------------------------------- entry point
def apply_correction(graph: Graph, weights: dict[str, dict], correction: str, equalized: dict,
                     calib: np.ndarray | None, scale_bits: int) -> dict[str, dict]:
    """Apply `correction` to freshly quantized `weights` (tersim.quantize.graph.quantize_weights)."""
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {correction!r}")
    if correction == "none":
        return weights
    if correction == "bn_reestimate":
        if calib is None:
            raise ValueError("bn_reestimate needs calibration inputs")
        bn_reestimate(graph, weights, calib, scale_bits)
        return weights
    float_weights = {n.name: equalized.get(n.name, (n.weight, None))[0] for n in graph.weighted()}
    for n in graph.weighted():
        if n.name in equalized:
            weights[n.name]["bias"] = equalized[n.name][1]
    bn_scale = {k[len("__scale__"):]: v[0] for k, v in equalized.items() if k.startswith("__scale__")}
    bias_correct(graph, weights, float_weights, bn_scale)
    return weights
