"""Quantization-aware fine-tuning (`tersim finetune`): train the BN-folded graph with FGQ in the loop.

    from tersim.finetune import FinetuneConfig, finetune, save_model
    result = finetune("model.pt2", load_dataset("train.npz"), FinetuneConfig(group_size=64, act_bits=8))
    save_model(result, "model_ft.pt2")     # accepted by `tersim run` / `verify`
"""
from tersim.finetune.graph_module import FLOAT_PLAN, GraphNet, QuantPlan
from tersim.errors import FinetuneError
from tersim.finetune.methods import METHODS
from tersim.finetune.train import FinetuneConfig, FinetuneResult, finetune, read_metadata, save_model

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "save_model", "read_metadata", "GraphNet", "QuantPlan",
           "FLOAT_PLAN", "METHODS", "FinetuneError"]
