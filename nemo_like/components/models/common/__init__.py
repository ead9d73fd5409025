"""Settings shared by every model: the kernel backends (``BackendConfig``)."""

from nemo_like.components.models.common.backend import BackendConfig

__all__ = ["BackendConfig"]
