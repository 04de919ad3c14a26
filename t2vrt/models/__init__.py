"""PyTorch definitions of the ModelScope T2V components and checkpoint loading.

Used by export, the tests and the PyTorch baseline only; the runtime never imports this package.
"""
