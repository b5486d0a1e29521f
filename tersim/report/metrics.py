"""How far the integer model's outputs are from the FP32 model's (and from the labels)."""
from __future__ import annotations

import numpy as np


def deviation(reference: np.ndarray, test: np.ndarray, labels: np.ndarray | None = None) -> dict[str, float]:
    """Max/mean abs error, cosine similarity (flattened), top-1 agreement and, with labels, both accuracies."""
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    out = test.reshape(len(test), -1).astype(np.float64)
    diff = np.abs(ref - out)
    norm = np.linalg.norm(ref) * np.linalg.norm(out)
    metrics = {
        "max_abs_err": float(diff.max()) if diff.size else 0.0,
        "mean_abs_err": float(diff.mean()) if diff.size else 0.0,
        "cosine": float(np.sum(ref * out) / norm) if norm > 0 else float(np.array_equal(ref, out)),
    }
    if ref.shape[1] > 1 and len(ref):
        metrics["top1_agreement"] = float(np.mean(ref.argmax(1) == out.argmax(1)))
        if labels is not None:
            metrics["accuracy_fp32"] = float(np.mean(ref.argmax(1) == labels))
            metrics["accuracy_quant"] = float(np.mean(out.argmax(1) == labels))
    return metrics
