"""How far the integer model's outputs are from the FP32 model's (and from the labels)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

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


class ExactSum:
    """A float sum kept exactly (Shewchuk's non-overlapping partials, as in math.fsum), so sums built over
    shards and merged in any order or grouping equal the serial sum bit for bit."""

    def __init__(self) -> None:
        self.partials: list[float] = []

    def add(self, value: float) -> None:
        partials = []
        x = float(value)
        for y in self.partials:
            if abs(x) < abs(y):
                x, y = y, x
            hi = x + y
            lo = y - (hi - x)
            if lo:
                partials.append(lo)
            x = hi
        partials.append(x)
        self.partials = partials

    def merge(self, other: "ExactSum") -> None:
        for value in other.partials:
            self.add(value)

    @property
    def value(self) -> float:
        return math.fsum(self.partials)


@dataclass
class StreamingDeviation:
    """`deviation` accumulated batch by batch in bounded memory; `merge` combines shards exactly.

    Counts are integers; each batch's float sums are rounded once (math.fsum of the batch), then summed exactly,
    so the result depends on the batch boundaries only (shards are cut at batch boundaries)."""

    samples: int = 0
    elements: int = 0
    labelled: int = 0
    max_abs_err: float = 0.0
    agree: int = 0
    correct_fp32: int = 0
    correct_quant: int = 0
    abs_err: ExactSum = field(default_factory=ExactSum)
    dot: ExactSum = field(default_factory=ExactSum)
    ref_sq: ExactSum = field(default_factory=ExactSum)
    out_sq: ExactSum = field(default_factory=ExactSum)
    classes: int = 0

    def update(self, reference: np.ndarray, test: np.ndarray, labels: np.ndarray | None = None) -> None:
        ref = reference.reshape(len(reference), -1).astype(np.float64)
        out = test.reshape(len(test), -1).astype(np.float64)
        diff = np.abs(ref - out)
        self.samples += len(ref)
        self.elements += diff.size
        self.classes = ref.shape[1]
        if diff.size:
            self.max_abs_err = max(self.max_abs_err, float(diff.max()))
        for acc, values in ((self.abs_err, diff), (self.dot, ref * out), (self.ref_sq, ref * ref),
                            (self.out_sq, out * out)):
            acc.add(math.fsum(values.ravel().tolist()))
        if ref.shape[1] > 1:
            ref_top, out_top = ref.argmax(1), out.argmax(1)
            self.agree += int(np.sum(ref_top == out_top))
            if labels is not None:
                self.labelled += len(labels)
                self.correct_fp32 += int(np.sum(ref_top == labels))
                self.correct_quant += int(np.sum(out_top == labels))

    def merge(self, other: "StreamingDeviation") -> None:
        self.samples += other.samples
        self.elements += other.elements
        self.labelled += other.labelled
        self.max_abs_err = max(self.max_abs_err, other.max_abs_err)
        self.agree += other.agree
        self.correct_fp32 += other.correct_fp32
        self.correct_quant += other.correct_quant
        self.classes = self.classes or other.classes
        for mine, theirs in ((self.abs_err, other.abs_err), (self.dot, other.dot), (self.ref_sq, other.ref_sq),
                             (self.out_sq, other.out_sq)):
            mine.merge(theirs)

    def result(self) -> dict[str, float]:
        """The keys of `deviation` (accuracies only when every sample had a label)."""
        norm = math.sqrt(self.ref_sq.value) * math.sqrt(self.out_sq.value)
        metrics = {
            "max_abs_err": self.max_abs_err,
            "mean_abs_err": self.abs_err.value / self.elements if self.elements else 0.0,
            "cosine": self.dot.value / norm if norm > 0 else float(self.ref_sq.value == self.out_sq.value == 0),
        }
        if self.classes > 1 and self.samples:
            metrics["top1_agreement"] = self.agree / self.samples
            if self.labelled == self.samples:
                metrics["accuracy_fp32"] = self.correct_fp32 / self.samples
                metrics["accuracy_quant"] = self.correct_quant / self.samples
        return metrics
