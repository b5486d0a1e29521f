"""Where FGQ groups sit in a weight tensor, and the reduction order (K order) the datapath follows.

Two group layouts (``quantization.group_layout``):

* ``channel`` (the paper's, the default): for each output channel and kernel position ``(ky, kx)``, runs of
  N consecutive input channels share alpha. K order through the array: ``(ky, kx, c)``; groups restart at
  every kernel position, ``G = ceil(Cin_g / N)`` groups per kernel position.
* ``kernel``: N consecutive weights of the flattened ``(Cin_g, kh, kw)`` filter share alpha. K order:
  ``(c, ky, kx)`` (the filter's own memory order); ``G = ceil(Cin_g * kh * kw / N)`` groups per output channel,
  a group may span kernel positions and input channels.

For 1x1 convolutions and linear layers both layouts are the same. Every consumer (integer kernels, torch
reference, cycle engine, analytic timing, counts) takes the K order and the group of every K index from
here, so the layouts cannot drift apart between them.
"""
from __future__ import annotations

import math

import numpy as np

GROUP_LAYOUTS = ("channel", "kernel")
SCALES = ("one", "two")


def check_layout(group_layout: str) -> str:
    if group_layout not in GROUP_LAYOUTS:
        raise ValueError(f"group_layout must be one of {GROUP_LAYOUTS}, got {group_layout!r}")
    return group_layout


def scale_count(scales: str | int) -> int:
    """Multiplies per group: 1 (one alpha) or 2 (alpha+ for the +1 codes, alpha- for the -1 codes)."""
    if scales in ("one", 1):
        return 1
    if scales in ("two", 2):
        return 2
    raise ValueError(f"scales must be 'one' or 'two', got {scales!r}")


def groups_per_filter(cin_g: int, kh: int, kw: int, group_size: int, group_layout: str) -> int:
    """Alpha groups per output channel: kh * kw * ceil(Cin_g / N) (channel) or ceil(Cin_g * kh * kw / N) (kernel)."""
    if check_layout(group_layout) == "channel":
        return kh * kw * math.ceil(cin_g / group_size)
    return math.ceil(cin_g * kh * kw / group_size)


def k_order(cin_g: int, kh: int, kw: int, group_layout: str) -> np.ndarray:
    """For each K step (in the layout's order) its flat index in the filter's (c, ky, kx) memory order."""
    flat = np.arange(cin_g * kh * kw, dtype=np.int64).reshape(cin_g, kh, kw)
    if check_layout(group_layout) == "channel":
        return flat.transpose(1, 2, 0).reshape(-1)
    return flat.reshape(-1)


def k_group_index(cin_g: int, kh: int, kw: int, group_size: int, group_layout: str) -> np.ndarray:
    """The alpha group (0 .. groups_per_filter - 1) of every K step, in the layout's K order.

    channel: K step k = (ky * kw + kx) * Cin_g + c is in group (ky * kw + kx) * G + c // N, which is also the
    flat index of alpha[o, ky, kx, g]; kernel: K step k is in group k // N. Group ends (where a group's exact
    partial sum leaves for a multiplier) are the steps whose successor is in another group.
    """
    k = np.arange(cin_g * kh * kw, dtype=np.int64)
    if check_layout(group_layout) == "channel":
        return (k // cin_g) * math.ceil(cin_g / group_size) + (k % cin_g) // group_size
    return k // group_size
