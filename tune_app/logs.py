"""Human-readable logging for the entry points."""

from __future__ import annotations

import logging
import os


def setup_logging(level: int | None = None) -> None:
    """INFO for tune_app, WARNING for the libraries; ``TUNE_APP_LOG_LEVEL`` overrides."""
    name = os.environ.get("TUNE_APP_LOG_LEVEL", "")
    resolved = level if level is not None else getattr(logging, name.upper(), logging.INFO)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.WARNING)
    logging.getLogger("tune_app").setLevel(resolved)
