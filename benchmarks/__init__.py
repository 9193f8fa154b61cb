"""Benchmarks of mhc_torch and mhc_jax against plain residual stacks and PyPI ``mhc`` 0.5.5.

Run everything with ``bash benchmarks/run.sh`` (see benchmarks/README.md); each section is a
module runnable on its own (``python -m benchmarks.torch_speed --quick``) and writes its raw
figures to ``benchmarks/results/<section>.json``; ``benchmarks.report`` turns them into
``benchmarks/RESULTS.md``.
"""
