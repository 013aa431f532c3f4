"""fmnist-lab: a Fashion-MNIST hyperparameter study, reproduced with Hydra and Lightning."""


def epochs_unless_steps(epochs: int, max_steps: object) -> object:
    """conf/trainer's max_epochs: `epochs`, or -1 (no epoch limit) where trainer.max_steps
    sets a step budget, so `trainer.max_steps=N` alone is a run of N steps. Given both ways
    on the command line, the config check names the clash."""
    budget = isinstance(max_steps, int) and not isinstance(max_steps, bool) and max_steps >= 1
    return -1 if budget else epochs


# Registered wherever the package is imported: every process that resolves a run's config
# (the command line, a sweep's or a SLURM job's process, the tests) imports it first. The
# report reads finished runs without OmegaConf (or torch), so it may be missing there.
try:
    from omegaconf import OmegaConf
except ImportError:
    pass
else:
    OmegaConf.register_new_resolver("epochs_unless_steps", epochs_unless_steps, replace=True)
