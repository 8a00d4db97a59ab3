"""Benchmarks that ship with the package: the kernel lab (python -m minimoe.bench.kernels)."""
