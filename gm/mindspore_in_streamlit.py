"""Importing MindSpore inside a Streamlit server.

MindSpore 2.8's generated ``*_pb2`` modules need protobuf's pure-Python backend, which MindSpore
selects itself (PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python) when it is imported first. Under
``streamlit run`` protobuf is already loaded, with its C (upb) backend, and importing MindSpore
fails ("Descriptors cannot be created directly"); mindone's README asks users to export the
variable before starting Streamlit. :func:`import_mindspore` makes that unnecessary: it imports
MindSpore against a private pure-Python copy of protobuf and puts Streamlit's modules back.
"""
import importlib
import os
import sys


def _protobuf_modules():
    return {k: v for k, v in sys.modules.items() if k == "google.protobuf" or k.startswith("google.protobuf.")}


def import_mindspore():
    """``import mindspore`` that also works after Streamlit has loaded protobuf's C backend."""
    if "mindspore" in sys.modules:
        return sys.modules["mindspore"]
    loaded = _protobuf_modules()
    backend = loaded.get("google.protobuf.internal.api_implementation")
    if backend is None or backend.Type() == "python":
        return importlib.import_module("mindspore")
    for name in loaded:
        del sys.modules[name]
    previous = os.environ.get("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION")
    os.environ["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"
    try:
        return importlib.import_module("mindspore")
    finally:
        sys.modules.update(loaded)
        if previous is None:
            os.environ.pop("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", None)
        else:
            os.environ["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = previous
