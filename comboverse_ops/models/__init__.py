"""Model loading: the shared cache and the loaders for the formats users have."""

from .cache import MODEL_CACHE, ModelCache, ModelKey

__all__ = ["MODEL_CACHE", "ModelCache", "ModelKey"]
