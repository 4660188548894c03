"""Tracking: MLflow (resumable logging) and study progress."""
