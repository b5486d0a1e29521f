"""tersim: ternarize PyTorch models with fine-grained quantization and simulate them on a ternary accelerator."""
__version__ = "0.1.0"
