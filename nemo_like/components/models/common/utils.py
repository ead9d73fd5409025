"""The second import path recipes use for ``BackendConfig`` (``...models.common.utils.BackendConfig``)."""

from nemo_like.components.models.common.backend import BackendConfig

__all__ = ["BackendConfig"]
