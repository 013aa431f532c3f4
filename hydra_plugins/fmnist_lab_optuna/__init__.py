"""fmnist-lab's Hydra plugin: hparams_search=optuna's resumable sweeper (see resumable.py).

Hydra accepts plugins only from the hydra_plugins namespace package, hence this folder.
"""
