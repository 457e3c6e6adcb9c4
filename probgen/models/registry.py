"""The registry of every model family (used by contract tests and examples)."""

from probgen.registry import Registry

MODELS: Registry = Registry("model")
