"""The evaluation harness: metrics, the floors and peers (one fit -> predict registry), the benchmark, the
leave-one-time-out protocol, the paper's experiments, plots and result tables.

The method (``sctrace.data``, ``sctrace.model``, ``sctrace.train``, ``sctrace.generate``, ``sctrace.TRACE``) never
imports this package; ``tests/test_layout.py`` checks that.
"""
