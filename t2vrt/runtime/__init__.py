"""The torch-free runtime: bundle -> tokens -> DDIM loop -> frames -> video file.

Imports neither torch, onnx nor t2vrt.models (tests/test_runtime_isolation.py proves it).
"""
