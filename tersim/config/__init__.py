"""Hardware configuration: YAML -> validated Accelerator."""
from tersim.config.hardware import Accelerator, load_accelerator

__all__ = ["Accelerator", "load_accelerator"]
