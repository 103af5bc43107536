"""sctrace: predict single-cell gene expression at unmeasured time points (TRACE)."""

from sctrace._errors import SctraceInputError

__version__ = "0.1.0"
__all__ = ["TRACE", "SctraceInputError", "__version__"]


def __getattr__(name: str):
    # TRACE is imported on first use: `import sctrace` stays light (no torch or Lightning) for the CLI's help and
    # for the data and metrics helpers.
    if name == "TRACE":
        from sctrace.estimator import TRACE

        return TRACE
    raise AttributeError(f"module 'sctrace' has no attribute {name!r}")
