"""fmnist-lab's Hydra sweepers: one_at_a_time (the seed study's sweeps over tasks and seeds).

Hydra accepts plugins only from the hydra_plugins namespace package, hence this folder.
"""
