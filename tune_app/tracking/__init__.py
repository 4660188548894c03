"""Tracking: MLflow (resumable, outage-tolerant logging), structured logs, sanitisation
and study progress."""
