"""Evidence-only augmentation throughput vs one tiny-model training epoch.

    python benchmarks/bench_augment.py [--num-posts 400] [--probability 0.5] [--threads 1]

On the embedded synthetic set (default config: 400 posts, seed 13, 70% train split):
times the TextAttack import and the WordNet load, then for each offline method one
cold call of ``augment_posts`` on the training posts (builds the augmenter, fills
its synonym cache) and the best of three warm calls (other seeds), and one training
epoch of the tiny model (default config, train step only) on the same posts. Prints
examples/s (training posts processed per second; about ``probability`` of them are
augmented) and the ratios warm augmentation / epoch and per-trial cost (import +
WordNet load where used + cold call) / epoch. Augmentation runs once per trial.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from tune_app.config import AppConfig
from tune_app.data.augment import augment_posts, summarise
from tune_app.data.nltk_setup import import_textattack
from tune_app.data.redsm5 import load_posts, make_splits
from tune_app.data.schema import Post
from tune_app.data.synthetic import write_synthetic_redsm5

METHODS = ("synonym", "insert", "swap", "char_perturb")


def epoch_time(posts: list[Post], cfg: AppConfig, epochs: int = 2) -> list[float]:
    """Seconds per training epoch of the default tiny model on ``posts``."""
    from tune_app.models.encoders import load_encoder
    from tune_app.trainable import build_split, class_weights, loss_settings, make_model
    from tune_app.training import build_optimizer, train_one_epoch

    encoder = load_encoder(cfg.model.name, seed=0)
    model = make_model(cfg, encoder, seed=0)
    split = build_split(posts, encoder.tokenizer, cfg, shuffle=True, seed=0)
    t = cfg.train
    optimizer = build_optimizer(model, name=t.optimizer, lr=t.lr, weight_decay=t.weight_decay)
    device = torch.device("cpu")
    loss_kwargs = loss_settings(cfg, class_weights(split, cfg, device))
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        train_one_epoch(model, split.loader, optimizer, None, loss_kwargs=loss_kwargs,
                        device=device, max_grad_norm=t.max_grad_norm)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--num-posts", type=int, default=AppConfig().data.num_posts)
    parser.add_argument("--probability", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (a trial gets tune.cpus_per_trial=1 by default)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = AppConfig()

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_synthetic_redsm5(Path(tmp) / "data", num_posts=args.num_posts,
                                        seed=cfg.data.synthetic_seed)
        posts = load_posts(source="local", path=folder).posts
    train_ids = set(make_splits(posts, ratios=(0.7, 0.15, 0.15), seed=cfg.data.split_seed)["train"])
    train = [p for p in posts if p.post_id in train_ids]
    spans = sum(len({(e.start, e.end) for e in p.evidence if e.start >= 0}) for p in train)
    print(f"synthetic set: {len(posts)} posts, train split {len(train)} posts "
          f"({spans} distinct evidence spans); probability {args.probability}; "
          f"torch threads {args.threads}")

    t0 = time.perf_counter()
    import_textattack(wordnet=True)
    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    from nltk.corpus import wordnet

    wordnet.synsets("sad")
    wordnet_s = time.perf_counter() - t0
    print(f"once per trial process: TextAttack import {import_s:.1f} s, "
          f"WordNet load {wordnet_s:.1f} s (synonym/insert only)")

    rows = []
    for method in METHODS:
        t0 = time.perf_counter()
        augment_posts(train, method=method, probability=args.probability, seed=0)
        cold = time.perf_counter() - t0
        warm = float("inf")
        for seed in (1, 2, 3):
            t0 = time.perf_counter()
            _, records = augment_posts(train, method=method, probability=args.probability,
                                       seed=seed)
            warm = min(warm, time.perf_counter() - t0)
        rows.append((method, cold, warm, summarise(records, len(train))))

    epochs = epoch_time(train, cfg)
    epoch = min(epochs)
    print(f"tiny-model training epoch on the {len(train)} train posts: "
          f"{', '.join(f'{t:.2f}' for t in epochs)} s (using {epoch:.2f} s)\n")
    print(f"{'method':<13}{'cold s':>8}{'warm s':>8}{'examples/s':>12}{'augmented/s':>13}"
          f"{'warm/epoch':>12}{'per-trial/epoch':>21}")
    for method, cold, warm, summary in rows:
        once = wordnet_s if method in ("synonym", "insert") else 0.0
        print(f"{method:<13}{cold:8.2f}{warm:8.2f}{len(train) / warm:12.0f}"
              f"{summary['posts_augmented'] / warm:13.0f}{warm / epoch:12.3f}"
              f"{(import_s + once + cold) / epoch:21.2f}")


if __name__ == "__main__":
    main()
