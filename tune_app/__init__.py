"""tune_app: a Ray Tune + Optuna harness for dual-head RedSM5 studies.

The flow: data -> models -> trainable -> checkpoints/retention -> tuner/callbacks
-> evaluation/report -> CLI (`python -m tune_app.run`).
"""

__version__ = "0.1.0"
