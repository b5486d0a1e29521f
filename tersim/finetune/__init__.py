"""Quantization-aware fine-tuning (`tersim finetune`): train the BN-folded graph with FGQ in the loop.

    from tersim.finetune import FinetuneConfig, finetune, save_model
    result = finetune("model.pt2", load_dataset("train.npz"), FinetuneConfig(group_size=64, act_bits=8))
    save_model(result, "model_ft.pt2")     # accepted by `tersim run` / `verify`

The API is imported on first use: the CLI builds its `finetune` parser without loading torch.
"""
from __future__ import annotations

from tersim import lazy_exports

METHODS = ("ste", "progressive", "stochastic", "kd")   # the fine-tuning methods (tersim.finetune.methods)

_LAZY = {
    "FLOAT_PLAN": "tersim.finetune.graph_module", "GraphNet": "tersim.finetune.graph_module",
    "QuantPlan": "tersim.finetune.graph_module", "FinetuneError": "tersim.errors",
    "FinetuneConfig": "tersim.finetune.train", "FinetuneResult": "tersim.finetune.train",
    "finetune": "tersim.finetune.train", "read_metadata": "tersim.finetune.train", "save_model": "tersim.finetune.train",
}
__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "save_model", "read_metadata", "GraphNet", "QuantPlan",
           "FLOAT_PLAN", "METHODS", "FinetuneError"]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
