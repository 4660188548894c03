"""The baseline of ``bench_trial_overhead``: the project's own per-trial steps in a plain
Optuna loop, in one process, with no Ray, no checkpoints, no tracking.

    python benchmarks/plain_optuna_loop.py --trials 20 --storage /tmp/loop [overrides...]

Per trial: apply_params -> load posts -> load_encoder -> make_model -> build_split ->
train_one_epoch -> evaluate (validation), for ``tune.max_epochs`` epochs, sampled by
TPE (seeded like the study) from the same search space. Prints the wall time.
"""

from __future__ import annotations

import argparse
import time

START = time.perf_counter()

import optuna  # noqa: E402
import torch  # noqa: E402

from searchspaces import load_space  # noqa: E402
from tune_app.config import compose  # noqa: E402
from tune_app.data.redsm5 import load_splits  # noqa: E402
from tune_app.models.encoders import load_encoder  # noqa: E402
from tune_app.study import SPLITS_FILE, load_posts_for, prepare_study  # noqa: E402
from tune_app.trainable import (  # noqa: E402
    apply_params,
    build_split,
    class_weights,
    evaluate,
    loss_settings,
    make_model,
    make_optimizer,
)
from tune_app.training import train_one_epoch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--storage", required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = compose([*args.overrides, f"tune.storage_path={args.storage}", "tune.name=loop"])
    prepare_study(cfg)
    torch.set_num_threads(torch.get_num_threads())
    space = load_space(cfg.searchspace, max_epochs=cfg.tune.max_epochs, model=cfg.model.name)
    sampler = optuna.samplers.TPESampler(seed=cfg.tune.sampler_seed, n_startup_trials=cfg.tune.n_startup_trials)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    device = torch.device("cpu")

    def objective(trial: optuna.Trial) -> float:
        params = dict(space(trial) or {})
        params.update(trial.params)
        tcfg = apply_params(cfg, params)
        split_ids = load_splits(cfg.study_dir / SPLITS_FILE)
        wanted = set(split_ids["train"]) | set(split_ids["validation"])
        posts = {p.post_id: p for p in load_posts_for(tcfg, only_post_ids=wanted).posts}
        encoder = load_encoder(tcfg.model.name, seed=tcfg.seed)
        model = make_model(tcfg, encoder, seed=tcfg.seed)
        train = build_split([posts[i] for i in sorted(split_ids["train"])], encoder.tokenizer, tcfg,
                            shuffle=True, seed=tcfg.seed)
        val = build_split([posts[i] for i in sorted(split_ids["validation"])], encoder.tokenizer, tcfg,
                          shuffle=False, seed=tcfg.seed)
        optimizer = make_optimizer(tcfg, model)
        loss_kwargs = loss_settings(tcfg, class_weights(train, tcfg, device))
        score = 0.0
        for _ in range(tcfg.trial_epochs):
            train_one_epoch(model, train.loader, optimizer, None, loss_kwargs=loss_kwargs, device=device)
            score = evaluate(model, val, tcfg, device, loss_kwargs=loss_kwargs)[tcfg.tune.metric]
        return score

    study.optimize(objective, n_trials=args.trials)
    print(f"plain optuna loop: {args.trials} trials, best {study.best_value:.4f}, "
          f"wall {time.perf_counter() - START:.2f} s")


if __name__ == "__main__":
    main()
