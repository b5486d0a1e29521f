"""Optional dependencies (the `report` and `dask` extras), imported only when a feature needs them."""
from __future__ import annotations

import importlib
from types import ModuleType

from tersim.errors import TersimError


class MissingExtraError(TersimError):
    """An optional dependency is not installed; the message names the pip extra that brings it."""


def require(module: str, extra: str = "report") -> ModuleType:
    """Import `module` or raise one line telling which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"{module.split('.')[0]} is not installed: pip install 'tersim[{extra}]'") from None
