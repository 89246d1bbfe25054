"""Cinfer: a declarative model-repository server speaking KServe v2 / Open Inference Protocol."""

__version__ = "0.1.0"
