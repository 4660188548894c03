"""Does every head learn with its defaults? Train each head combination a few epochs on the
embedded data set and print its validation curves beside the baselines.

    python benchmarks/learning_matrix.py [--groups criteria evidence encoders]
        [--criteria-epochs 8] [--cls-epochs N] [--criteria-marginal] [--evidence-epochs 8]
        [--encoder-epochs 2] [--encoder-posts 140] [--workers 2] [--json out.json] [overrides...]

Groups (each job is one in-process training run, ``tune_app.training.standalone``: the
trainable's own steps, no Ray; the study's split and seed):

* ``criteria``: every criteria head x pooling (evidence head ``start_end_linear``; with
  ``--criteria-marginal`` only every head with the default pooling and every pooling with
  the default head, as the slow test does);
* ``evidence``: every evidence head (criteria head and pooling of the model config);
* ``encoders``: ``model=minilm`` and ``model=tiny`` with their defaults on the same posts and
  epochs (``--encoder-posts``, ``--encoder-epochs``).

Jobs run in ``--workers`` processes (1 torch thread each; the encoder jobs get all of them,
one after the other). Printed per job: ``val_macro_f1`` and ``val_evidence_f1`` per epoch,
the best of each, and its wall and CPU seconds; then the baselines on the same validation
split (``tune_app.evaluation.baselines``: TF-IDF + logistic regression and always-positive
macro-F1; the lexical evidence baseline's char F1, which compares with the model's token F1
on the embedded set's whole-word spans). Extra arguments are Hydra overrides for every job.
``tests/models/test_learning_heads.py`` runs a short version of this matrix.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tune_app.models.catalog import CRITERIA_HEADS, EVIDENCE_HEADS, POOLINGS  # noqa: E402

#: The evidence head of the criteria jobs: the cheapest (the criteria head is under test).
CRITERIA_JOB_EVIDENCE_HEAD = "start_end_linear"
#: CPU cost of an epoch relative to the cheapest jobs' (measured on the tiny model), for
#: scheduling the longest jobs first.
EPOCH_COST: dict[str, float] = {"biaffine": 3.0, "bio_crf": 2.5}


@dataclass(frozen=True)
class Job:
    """One training run: Hydra overrides, epochs, optionally only the first training posts."""

    group: str
    name: str
    overrides: tuple[str, ...]
    epochs: int
    train_posts: int | None = None
    threads: int = 1

    @property
    def cost(self) -> float:
        """Expected CPU cost (epochs x relative epoch cost), for scheduling."""
        return self.epochs * max((c for h, c in EPOCH_COST.items() if f"model.evidence_head={h}" in self.overrides),
                                 default=1.0)


@dataclass
class Outcome:
    """A job's per-epoch validation metrics and what it cost."""

    job: Job
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    cpu_s: float = 0.0

    def curve(self, key: str) -> list[float]:
        return [round(float(h[key]), 3) for h in self.history]

    def best(self, key: str) -> float:
        return max(float(h[key]) for h in self.history)


def criteria_jobs(epochs: int | dict[str, int], overrides: Sequence[str] = (), *, full: bool = True) -> list[Job]:
    """Every criteria head x pooling (``full``), or every head with the model config's pooling
    and every pooling with its head; ``epochs`` per pooling when a dict (key ``default``)."""
    per = epochs if isinstance(epochs, dict) else {"default": epochs}
    if full:
        pairs = [(head, pooling) for head in CRITERIA_HEADS for pooling in POOLINGS]
    else:
        from tune_app.config import compose

        model = compose(list(overrides)).model
        pairs = [(head, model.pooling) for head in CRITERIA_HEADS]
        pairs += [(model.criteria_head, p) for p in POOLINGS if p != model.pooling]
    return [Job("criteria", f"{head} x {pooling}",
                (f"model.criteria_head={head}", f"model.pooling={pooling}",
                 f"model.evidence_head={CRITERIA_JOB_EVIDENCE_HEAD}", *overrides),
                per.get(pooling, per["default"]))
            for head, pooling in pairs]


def evidence_jobs(epochs: int, overrides: Sequence[str] = ()) -> list[Job]:
    """Every evidence head with the model config's other defaults."""
    return [Job("evidence", head, (f"model.evidence_head={head}", *overrides), epochs) for head in EVIDENCE_HEADS]


def encoder_jobs(epochs: int, train_posts: int | None, threads: int, overrides: Sequence[str] = ()) -> list[Job]:
    """``minilm`` and ``tiny`` with their defaults, same posts and epochs."""
    return [Job("encoders", model, (f"model={model}", *overrides), epochs, train_posts, threads)
            for model in ("minilm", "tiny")]


@cache
def _splits(storage: str) -> Any:
    from tune_app.config import compose
    from tune_app.training.standalone import study_splits

    return study_splits(compose([f"tune.storage_path={storage}"]))


def run_job(job: Job, storage: str) -> Outcome:
    """Train ``job`` on the default data set's split (generated under ``storage``)."""
    from tune_app.config import compose
    from tune_app.training.standalone import train_config

    cfg = compose([*job.overrides, f"tune.max_epochs={job.epochs}", f"tune.storage_path={storage}"])
    splits = _splits(storage)
    wall, cpu = time.perf_counter(), time.process_time()
    history = train_config(cfg, splits, train_posts=job.train_posts, threads=job.threads)
    return Outcome(job, history, time.perf_counter() - wall, time.process_time() - cpu)


def _quiet_worker() -> None:
    import logging
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)


def run_jobs(jobs: Iterable[Job], storage: str, *, workers: int = 1) -> list[Outcome]:
    """Run ``jobs`` in ``workers`` fresh (spawned) processes, or here when ``workers`` is 1;
    outcomes in the order of ``jobs``. The data set is generated here first."""
    jobs = list(jobs)
    _splits(storage)
    if workers <= 1 or len(jobs) <= 1:
        return [run_job(job, storage) for job in jobs]
    ctx = multiprocessing.get_context("spawn")
    order = sorted(range(len(jobs)), key=lambda i: -jobs[i].cost)  # longest first: even finish
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_quiet_worker) as pool:
        futures = {i: pool.submit(run_job, jobs[i], storage) for i in order}
        return [futures[i].result() for i in range(len(jobs))]


def validation_baselines(storage: str) -> dict[str, float]:
    """The baselines' scores on the validation split the jobs are scored on."""
    from tune_app.evaluation.baselines import criteria_baselines, evidence_baseline

    s = _splits(storage)
    crit = criteria_baselines(s.train, s.validation)
    return {"tfidf_logreg_macro_f1": crit["tfidf_logreg"]["macro_f1"],
            "always_positive_macro_f1": crit["always_positive"]["macro_f1"],
            "lexical_tfidf_char_f1": evidence_baseline(s.train, s.validation)["char_f1"]}


def table(outcomes: Sequence[Outcome], baselines: dict[str, float]) -> str:
    """A plain-text table of the outcomes and the baselines."""
    lines = [f"{'job':34} {'ep':>3} {'best mF1':>8} {'best eF1':>8} {'wall s':>7} {'cpu s':>6}  "
             "val_macro_f1 per epoch | val_evidence_f1 per epoch"]
    for o in outcomes:
        lines.append(f"{o.job.group + ' ' + o.job.name:34} {o.job.epochs:>3} {o.best('val_macro_f1'):8.3f} "
                     f"{o.best('val_evidence_f1'):8.3f} {o.wall_s:7.1f} {o.cpu_s:6.1f}  "
                     f"{o.curve('val_macro_f1')} | {o.curve('val_evidence_f1')}")
    lines.append("validation baselines: " + ", ".join(f"{k} {v:.3f}" for k, v in baselines.items()))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", nargs="+", default=["criteria", "evidence", "encoders"],
                        choices=["criteria", "evidence", "encoders"])
    parser.add_argument("--criteria-epochs", type=int, default=8)
    parser.add_argument("--cls-epochs", type=int, default=None, help="criteria jobs with cls pooling (default: same)")
    parser.add_argument("--criteria-marginal", action="store_true", help="not the full head x pooling product")
    parser.add_argument("--evidence-epochs", type=int, default=8)
    parser.add_argument("--encoder-epochs", type=int, default=2)
    parser.add_argument("--encoder-posts", type=int, default=140, help="training posts of the encoder jobs (0: all)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--storage", default=None, help="where the data set is generated (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="write every outcome here")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    _quiet_worker()
    with tempfile.TemporaryDirectory(prefix="learning_matrix_") as tmp:
        storage = args.storage or tmp
        small: list[Job] = []
        if "criteria" in args.groups:
            epochs = {"default": args.criteria_epochs, "cls": args.cls_epochs or args.criteria_epochs}
            small += criteria_jobs(epochs, args.overrides, full=not args.criteria_marginal)
        if "evidence" in args.groups:
            small += evidence_jobs(args.evidence_epochs, args.overrides)
        start = time.perf_counter()
        outcomes = run_jobs(small, storage, workers=args.workers)
        if "encoders" in args.groups:
            outcomes += run_jobs(encoder_jobs(args.encoder_epochs, args.encoder_posts or None,
                                              max(args.workers, 1), args.overrides), storage)
        wall = time.perf_counter() - start
        baselines = validation_baselines(storage)
    print(table(outcomes, baselines))
    print(f"total wall {wall:.0f} s, {args.workers} worker(s)")
    if args.json:
        args.json.write_text(json.dumps({"baselines": baselines, "wall_s": wall,
                                         "outcomes": [asdict(o) for o in outcomes]}, indent=1, default=float))


if __name__ == "__main__":
    main()
