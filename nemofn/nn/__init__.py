"""Stateless modules: frozen attrs hyperparameters, ``init(rng) -> (params, buffers)``, pure ``apply``."""
