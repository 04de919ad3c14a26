"""t2vrt: ModelScope text-to-video on one NVIDIA card.

`from t2vrt import Pipeline` is the runtime's entry point; it imports neither torch nor onnx.
"""

__version__ = "0.1.0"

__all__ = ["Pipeline", "Video", "__version__"]


def __getattr__(name: str):  # lazy, so `import t2vrt` stays cheap for the CLI
    if name in ("Pipeline", "Video"):
        from t2vrt.runtime import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 't2vrt' has no attribute {name!r}")
