"""Checkpoints: the atomic hashed store, retention decisions, and the storage monitor."""
