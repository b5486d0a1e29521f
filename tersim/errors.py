"""One exception family: the CLI prints any TersimError as a single line and exits non-zero."""
from __future__ import annotations


class TersimError(Exception):
    """A user-facing error: the message names the file, field or graph node at fault."""

    exit_code = 2


class ConfigError(TersimError):
    """The hardware YAML is missing, malformed or has an invalid field."""


class ModelLoadError(TersimError):
    """The model file cannot be read safely or is in an unknown format."""


class UnsupportedOpsError(TersimError):
    """The graph holds ops tersim cannot lower; lists every one, with its node name."""

    def __init__(self, offenders: list[tuple[str, str]], source: str = "model"):
        self.offenders = offenders
        listed = ", ".join(f"{op} (node '{node}')" for node, op in offenders)
        super().__init__(f"{source}: {len(offenders)} unsupported op(s): {listed}")


class OptionError(TersimError, ValueError):
    """A run option has a bad value or is unknown; the message names the Python keyword (or CLI flag)."""


class DataError(TersimError):
    """An evaluation/calibration data file is missing or malformed."""


class EngineError(TersimError, ValueError):
    """The cycle-stepped engine cannot run a layer (bad input, unsupported mode) or disagrees with a model."""


def one_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name if it has none): for one-line errors."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


class FinetuneError(TersimError):
    """A fine-tuning option, checkpoint or schedule is invalid (the message names it)."""
