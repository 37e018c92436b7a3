"""Builds the Cython hot path from ext/ (see docs/design.md, "Hot path").

MGFAST_CYTHON_ANNOTATE=1 writes Cython's annotation HTML next to each .pyx, to check the hot
path for Python interaction; MGFAST_CYTHON_TRACE=1 builds with line tracing for profilers.
"""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

TRACE = os.environ.get("MGFAST_CYTHON_TRACE") == "1"

extensions = [
    Extension(
        "mgfast._messages",
        ["ext/messages.pyx"],
        define_macros=[("CYTHON_TRACE_NOGIL", "1")] if TRACE else [],
    ),
    Extension(
        "mgfast._media",
        ["ext/media.pyx"],
        define_macros=[("CYTHON_TRACE_NOGIL", "1")] if TRACE else [],
    ),
    Extension(
        "mgfast._zmq_io",
        ["ext/zmq_io.pyx"],
        define_macros=[("CYTHON_TRACE_NOGIL", "1")] if TRACE else [],
    ),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        include_path=["."],  # mgfast/_messages.pxd: the Message type the other modules use
        annotate=os.environ.get("MGFAST_CYTHON_ANNOTATE") == "1",
        compiler_directives={"linetrace": TRACE, "boundscheck": False, "wraparound": False},
    ),
)
