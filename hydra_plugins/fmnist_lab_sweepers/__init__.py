"""fmnist-lab's Hydra sweepers: one_at_a_time (the seed study's sweeps over tasks and seeds) and
optuna (hparams_search=optuna: optuna >= 4, a study workers share, pruning inside the runs).

Hydra accepts plugins only from the hydra_plugins namespace package, hence this folder.
"""
