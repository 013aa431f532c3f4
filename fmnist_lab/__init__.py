"""fmnist-lab: a Fashion-MNIST hyperparameter study, reproduced with Hydra and Lightning."""
