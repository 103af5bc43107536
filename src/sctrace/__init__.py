"""sctrace: predict single-cell gene expression at unmeasured time points (TRACE)."""

from sctrace._errors import SctraceInputError

__version__ = "0.1.0"
__all__ = ["SctraceInputError", "__version__"]
