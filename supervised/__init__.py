"""Supervised future-stability controller: trace collection, model, trainer, deployable policy."""
