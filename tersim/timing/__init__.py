"""Fast analytic timing: LayerShape -> LayerTiming per layer (ternary design and FP32 baseline) -> model summary.

See docs/TIMING.md for the model. `scalesim_bridge` (SCALE-Sim cross-check) is imported separately.
"""
from tersim.timing.analytic import LayerTiming, baseline_layer_timing, layer_timing
from tersim.timing.shapes import LayerShape
from tersim.timing.summary import model_summary, projected_speedup_formula

__all__ = ["LayerShape", "LayerTiming", "baseline_layer_timing", "layer_timing", "model_summary", "projected_speedup_formula"]
