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


def lazy_exports(module: str, names: dict[str, str], namespace: dict):
    """(__getattr__, __dir__) for a package that imports its API on first use: names maps each exported
    name to the module defining it; a looked-up value is stored in namespace (the package's globals())."""

    def __getattr__(name: str) -> object:
        if name not in names:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(names[name]), name)
        namespace[name] = value  # later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *names})

    return __getattr__, __dir__


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
