"""A trial's seed: one definition for the trainable that uses it and the driver that records it.

Pure functions (no torch, no Ray): the MLflow callback on the driver derives the same seed
the trainable trains with, from the study's seed, ``train.seed_policy`` and the trial's
sampled params (``trial.config``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

#: Sampled params that override the study config (see ``trainable.apply_params``).
SEED_PARAM = "seed"
POLICY_PARAM = "train.seed_policy"


def derive_seed(seed: int, policy: str, params: Mapping[str, Any]) -> int:
    """``seed`` under ``policy`` ``study``; under ``per_trial`` one derived from ``seed`` and
    ``params``, so trials differ in their random draws yet each is reproducible."""
    if policy == "study":
        return int(seed)
    digest = hashlib.sha256(json.dumps([seed, dict(params)], sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:4], "big") % 2**31


def trial_seed_for(study_seed: int, policy: str, params: Mapping[str, Any]) -> int:
    """The seed the trainable uses for a trial sampled as ``params`` in a study with
    ``study_seed`` and ``policy`` (a sampled ``seed`` / ``train.seed_policy`` wins, as it
    does in the trial's config)."""
    seed = int(params[SEED_PARAM]) if SEED_PARAM in params else int(study_seed)
    return derive_seed(seed, str(params.get(POLICY_PARAM, policy)), params)
