"""fmnist-lab's Hydra launcher: hydra/launcher=slurm and slurm_cpu (conf/hydra/launcher/), SLURM
through submitit with a check of the request before any job, job states where the cluster keeps
no accounting, and a run whose job ended without a result recorded as failed.

Hydra accepts plugins only from the hydra_plugins namespace package, hence this folder.
"""
