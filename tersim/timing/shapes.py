"""The timing model's view of one conv/linear layer: a handful of integers (and, optionally, which
weights are zero, for `zero_weights: skip`).

A convolution is mapped onto the array as GEMMs (im2col view), one per convolution group:

    K = kernel_h * kernel_w * in_channels / groups    reduction length (one output = K MACs)
    N = out_channels / groups                         filters per group
    P = batch * out_h * out_w                         output pixels

A grouped convolution is `groups` independent (K, N, P) GEMMs; a linear layer is a 1x1 convolution on
a 1x1 image (P = batch). The reduction order inside K is the numerics contract's: kernel position
(ky, kx) outer, input channel inner, so FGQ groups are runs of `group_size` consecutive K indices that
restart at every kernel position.

Note the two different N's: `gemm_n` (filters, the GEMM's N) and `group_size` (FGQ's N, weights per alpha).
"""
from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass, field, fields
from typing import Literal

import numpy as np

from tersim.quantize.layout import GROUP_LAYOUTS, groups_per_filter, k_order

WeightKind = Literal["ternary", "int8"]


@dataclass(frozen=True)
class LayerShape:
    """One conv/linear layer as the timing model sees it (padding is already folded into out_h/out_w)."""

    name: str
    batch: int
    in_channels: int
    in_h: int
    in_w: int
    out_channels: int
    out_h: int
    out_w: int
    kernel_h: int = 1
    kernel_w: int = 1
    stride_h: int = 1
    stride_w: int = 1
    groups: int = 1
    weight_kind: WeightKind = "ternary"
    group_size: int = 4            # FGQ N: weights per alpha along the input channels (int8 layers: Cin/groups)
    zero_fraction: float = 0.0     # fraction of zero weight codes (energy: zero weights are gated)
    group_layout: str = "channel"  # tersim.quantize.layout: the K order and where groups end (int8: channel)
    scales: int = 1                # multiplies per group: 1, or 2 (alpha+ and alpha-)
    weight_bits: int = 8           # int8-kind layers: stored bits per code (k-bit schemes; tersim.quantize.schemes)
    weight_scheme: str = "uniform"  # int8-kind layers: the scheme of the codes (PE kind: tersim.timing.pe_kinds)
    # Which weights are non-zero: bool (out_channels, gemm_k), K in GEMM order (ky, kx, channel). Lets
    # `zero_weights: skip` find the K indices a column fold can drop; None (no weights known): nothing.
    nonzero: np.ndarray | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        for field in ("batch", "in_channels", "in_h", "in_w", "out_channels", "out_h", "out_w",
                      "kernel_h", "kernel_w", "stride_h", "stride_w", "groups", "group_size"):
            value = getattr(self, field)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"LayerShape {self.name!r}: {field} must be a positive int, got {value!r}")
            object.__setattr__(self, field, int(value))  # numpy ints from shapes become plain ints
        object.__setattr__(self, "zero_fraction", float(self.zero_fraction))
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"LayerShape {self.name!r}: groups={self.groups} must divide in_channels "
                             f"({self.in_channels}) and out_channels ({self.out_channels})")
        if self.weight_kind not in ("ternary", "int8"):
            raise ValueError(f"LayerShape {self.name!r}: weight_kind must be 'ternary' or 'int8', "
                             f"got {self.weight_kind!r}")
        if self.group_layout not in GROUP_LAYOUTS:
            raise ValueError(f"LayerShape {self.name!r}: group_layout must be one of {GROUP_LAYOUTS}, "
                             f"got {self.group_layout!r}")
        if self.scales not in (1, 2):
            raise ValueError(f"LayerShape {self.name!r}: scales must be 1 or 2, got {self.scales!r}")
        if not 0.0 <= self.zero_fraction <= 1.0:
            raise ValueError(f"LayerShape {self.name!r}: zero_fraction must be in [0, 1], got {self.zero_fraction}")
        if self.nonzero is not None:
            mask = np.asarray(self.nonzero, dtype=bool)
            if mask.shape != (self.out_channels, self.gemm_k):
                raise ValueError(f"LayerShape {self.name!r}: nonzero must be (out_channels, K) = "
                                 f"({self.out_channels}, {self.gemm_k}), got {mask.shape}")
            object.__setattr__(self, "nonzero", mask)

    @staticmethod
    def nonzero_of(weights: np.ndarray, group_layout: str = "channel") -> np.ndarray:
        """The `nonzero` mask of conv weights (Cout, Cin/groups, kh, kw) or linear weights (Cout, Cin), K in the
        layout's order."""
        w = np.asarray(weights)
        if w.ndim == 2:
            w = w[:, :, None, None]
        mask = (w != 0).reshape(w.shape[0], -1)
        return mask[:, k_order(w.shape[1], w.shape[2], w.shape[3], group_layout)]

    @classmethod
    def linear(cls, name: str, in_features: int, out_features: int, *, batch: int = 1, **kwargs) -> "LayerShape":
        """A fully connected layer: a 1x1 convolution on a 1x1 image."""
        return cls(name=name, batch=batch, in_channels=in_features, in_h=1, in_w=1,
                   out_channels=out_features, out_h=1, out_w=1, **kwargs)

    @classmethod
    def conv2d(cls, name: str, in_channels: int, out_channels: int, in_hw: tuple[int, int],
               kernel: int | tuple[int, int], *, stride: int | tuple[int, int] = 1,
               padding: int | tuple[int, int] = 0, batch: int = 1, **kwargs) -> "LayerShape":
        """A convolution, output size computed as PyTorch does (no dilation)."""
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        sh, sw = (stride, stride) if isinstance(stride, int) else stride
        ph, pw = (padding, padding) if isinstance(padding, int) else padding
        h, w = in_hw
        oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        return cls(name=name, batch=batch, in_channels=in_channels, in_h=h, in_w=w, out_channels=out_channels,
                   out_h=oh, out_w=ow, kernel_h=kh, kernel_w=kw, stride_h=sh, stride_w=sw, **kwargs)

    @functools.cached_property
    def geometry(self) -> tuple:
        """Every field but the name, the zero fraction, the non-zero mask and the weight scheme: all that the
        array's dense schedule, cycles and bytes of the layer read (the energy also reads the zero fraction and
        the scheme), so layers equal here time alike on one design."""
        return tuple(getattr(self, f.name) for f in fields(self) if f.name not in _NOT_GEOMETRY)

    # --- GEMM view (per convolution group) -------------------------------------------------------
    @property
    def cin_per_group(self) -> int:
        return self.in_channels // self.groups

    @property
    def gemm_k(self) -> int:
        """Reduction length K = kh * kw * Cin / groups."""
        return self.kernel_h * self.kernel_w * self.cin_per_group

    @property
    def gemm_n(self) -> int:
        """Filters per group N = Cout / groups."""
        return self.out_channels // self.groups

    @property
    def gemm_p(self) -> int:
        """Output pixels P = batch * OH * OW."""
        return self.batch * self.out_h * self.out_w

    @property
    def macs(self) -> int:
        """FP32-equivalent MACs of the whole layer (all groups, padding positions included)."""
        return self.groups * self.gemm_k * self.gemm_n * self.gemm_p

    @property
    def scale_groups_per_kpos(self) -> int:
        """FGQ groups per (output channel, kernel position): G = ceil(Cin_per_group / group_size)."""
        return math.ceil(self.cin_per_group / self.group_size)

    @property
    def scale_segments(self) -> int:
        """Alpha groups per output value: kh * kw * G (int8 layers: one per kernel position; kernel layout:
        ceil(K / N)); each takes `scales` multiplies."""
        return groups_per_filter(self.cin_per_group, self.kernel_h, self.kernel_w, self.group_size, self.group_layout)

    @property
    def num_weights(self) -> int:
        return self.out_channels * self.cin_per_group * self.kernel_h * self.kernel_w

    @property
    def num_alphas(self) -> int:
        """Stored scales: one per (Cout, ky, kx, group) for ternary, one per output channel for int8."""
        if self.weight_kind == "int8":
            return self.out_channels
        return self.out_channels * self.scale_segments * self.scales

    @property
    def input_elements(self) -> int:
        return self.batch * self.in_channels * self.in_h * self.in_w

    @property
    def output_elements(self) -> int:
        return self.batch * self.out_channels * self.out_h * self.out_w


_NOT_GEOMETRY = frozenset({"name", "zero_fraction", "nonzero", "weight_scheme"})
