"""Evaluation: validation/test metrics for both heads, and (later) study reports."""
