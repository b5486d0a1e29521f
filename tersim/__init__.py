"""tersim: ternarize PyTorch models with fine-grained quantization and simulate them on a ternary accelerator.

    import tersim
    result = tersim.run("hw_configs/default.yaml", "examples/digits_resnet.pt2", group_size=4)   # RunResult
    points = tersim.sweep("hw_configs/default.yaml", "examples/digits_resnet.pt2", [1, 4, 64], [8, 4])

The API is imported on first use: `import tersim` does not load torch or numba.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "run": "tersim.pipeline", "RunResult": "tersim.pipeline", "RunOptions": "tersim.options",
    "sweep": "tersim.sweeps", "run_sweep": "tersim.sweeps", "SweepResult": "tersim.sweeps",
    "Accelerator": "tersim.config", "load_accelerator": "tersim.config",
    "import_model": "tersim.frontend",
    "analyze": "tersim.report.analysis",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'tersim' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
