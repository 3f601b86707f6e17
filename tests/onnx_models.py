"""The synthetic insightface-format models of the tests live in f2d_core/synthetic_onnx.py,
shared with the benchmark (`python -m f2d_core bench`)."""
from f2d_core.synthetic_onnx import *  # noqa: F401,F403
