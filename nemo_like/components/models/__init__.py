"""Model-side settings shared by the model loaders (``common.BackendConfig``)."""
