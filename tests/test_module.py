"""The LightningModule's own parts: the counted optimizer step and the epoch metrics."""

from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from fmnist_lab.module import EpochMean, counted_step
from fmnist_lab.run import build_datamodule, build_module


def _step_parts():
    net = torch.nn.Linear(4, 2)
    loss = F.cross_entropy(net(torch.randn(8, 4)), torch.randint(0, 2, (8,)))
    return net, loss, torch.optim.SGD(net.parameters(), lr=0.1)


def test_counted_step_steps_and_is_counted_as_lightning_counts():
    net, loss, optimizer = _step_parts()
    trainer = SimpleNamespace(global_step=0)
    hooks = SimpleNamespace(optimizer=optimizer, _on_before_step=lambda: None,
                            _on_after_step=lambda: setattr(trainer, "global_step", 1))
    before = net.weight.detach().clone()
    counted_step(trainer, hooks, loss)
    assert not torch.equal(net.weight, before)


@pytest.mark.parametrize("hooks", [
    {},  # renamed or removed
    {"_on_before_step": lambda: None, "_on_after_step": lambda: None},  # no longer counting
])
def test_counted_step_says_so_where_lightning_moved_its_step_hooks(hooks):
    _, loss, optimizer = _step_parts()
    lightning_optimizer = SimpleNamespace(optimizer=optimizer, **hooks)
    with pytest.raises(RuntimeError, match=f"pytorch_lightning {pl.__version__} no longer "
                                           "counts optimizer steps.*pytorch-lightning<2.7"):
        counted_step(SimpleNamespace(global_step=0), lightning_optimizer, loss)


def test_epoch_mean_weights_by_count_and_keeps_nan():
    mean = EpochMean()
    mean.update(torch.tensor(3.0), 3)  # three images of loss 1
    mean.update(torch.tensor(0.0), 1)
    assert mean.compute() == pytest.approx(0.75)
    mean.update(torch.tensor(float("nan")), 1)
    assert torch.isnan(mean.compute())


def test_validation_metrics_are_means_over_images_not_batches(cfg_factory):
    # 500 validation images in 31 batches of 16 and one of 4.
    cfg = cfg_factory("model=three_fc", "data.eval_batch_size=16")
    datamodule, module = build_datamodule(cfg), build_module(cfg)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    logged = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    x, y = datamodule.val_dataloader().images, datamodule.val_dataloader().labels
    assert len(y) == 500
    with torch.no_grad():
        logits = module(datamodule.prepare(x))
    assert logged["val/loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert logged["val/acc"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
