import pytest
import torch
from torch import nn

from fmnist_lab.models import (
    ThreeConv,
    build_model,
    init_weights,
    model_name,
    model_names,
    num_params,
    study_models,
)

# What PyTorch reports for each network (the counts the study's tables show).
EXPECTED_PARAMS = {
    "two_conv_one_fc": 1_625_866,
    "one_conv_two_fc": 411_402,
    "three_fc": 94_154,
    "three_conv": 155_402,
    "resnet18": 11_172_810,
}
LAST_HIDDEN = {"two_conv_one_fc": 128, "one_conv_two_fc": 128, "three_fc": 256,
               "three_conv": 128 * 7 * 7, "resnet18": 512}


def test_every_network_is_named_by_its_config_file(cfg_factory):
    assert model_names() == sorted(EXPECTED_PARAMS)
    assert study_models() == ["two_conv_one_fc", "one_conv_two_fc", "three_fc", "three_conv"]
    for name in model_names():  # what results.json records for a run of `model=NAME`
        assert model_name(cfg_factory(f"model={name}").model) == name


@pytest.mark.parametrize("name", EXPECTED_PARAMS)
def test_parameter_counts_match_the_spec(name):
    assert num_params(build_model(name)) == EXPECTED_PARAMS[name]


@pytest.mark.parametrize("name", EXPECTED_PARAMS)
def test_shapes_of_logits_and_last_hidden_layer(name):
    net = build_model(name).eval()
    x = torch.randn(3, 1, 28, 28)
    assert net(x).shape == (3, 10)
    assert net.features(x).shape == (3, LAST_HIDDEN[name])


def test_three_conv_has_two_pools_and_documents_why():
    net = build_model("three_conv")
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.modules()) == 2
    assert "128*7*7" in ThreeConv.__doc__


def test_resnet18_has_small_image_stem():
    net = build_model("resnet18")
    conv1 = net.features[0]
    assert (conv1.in_channels, conv1.kernel_size, conv1.stride) == (1, (3, 3), (1, 1))
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())


@pytest.mark.parametrize("scheme", ["xavier_uniform", "xavier_normal", "kaiming_uniform",
                                    "kaiming_normal"])
def test_init_schemes_set_weights_and_zero_biases(scheme):
    torch.manual_seed(0)
    net = build_model("three_fc")
    before = net.features[1].weight.clone()
    init_weights(net, scheme)
    layers = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert all(torch.count_nonzero(m.bias) == 0 for m in layers)
    assert not torch.equal(before, net.features[1].weight)
    w = net.features[1].weight  # 784 -> 64
    fan_in, fan_out = 784, 64
    expected_std = ((2 / (fan_in + fan_out)) ** 0.5 if scheme.startswith("xavier")
                    else (2 / fan_in) ** 0.5)
    assert w.std().item() == pytest.approx(expected_std, rel=0.05)


def test_default_init_is_pytorchs_own():
    torch.manual_seed(0)
    a = build_model("three_conv")
    torch.manual_seed(0)
    b = init_weights(build_model("three_conv"), "default")
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    assert any(torch.count_nonzero(m.bias) > 0 for m in b.modules() if isinstance(m, nn.Conv2d))


STUDY_NETS = ["two_conv_one_fc", "one_conv_two_fc", "three_fc", "three_conv"]
# Batch norm adds a scale and a shift per hidden unit and drops that layer's bias.
BATCH_NORM_PARAMS = {"two_conv_one_fc": 1_626_090, "one_conv_two_fc": 411_626,
                     "three_fc": 94_602, "three_conv": 155_626}


@pytest.mark.parametrize("name", STUDY_NETS)
def test_batch_norm_precedes_every_hidden_relu(name):
    net = build_model(name, norm="batch")
    assert num_params(net) == BATCH_NORM_PARAMS[name]
    layers = list(net.features.modules())
    norms = [i for i, m in enumerate(layers) if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]
    relus = [i for i, m in enumerate(layers) if isinstance(m, nn.ReLU)]
    assert [i + 1 for i in norms] == relus  # each ReLU right after its norm
    assert all(m.bias is None for m in layers[1:] if isinstance(m, nn.Conv2d | nn.Linear))
    x = torch.randn(4, 1, 28, 28)
    assert net(x).shape == (4, 10) and net.eval()(x).shape == (4, 10)


@pytest.mark.parametrize("name", STUDY_NETS)
def test_dropout_is_off_by_default_and_random_only_in_training(name):
    assert not any(isinstance(m, nn.Dropout) for m in build_model(name).modules())
    net = build_model(name, dropout=0.5)
    assert num_params(net) == EXPECTED_PARAMS[name]
    hidden_fc = sum(isinstance(m, nn.Linear) for m in net.features.modules())
    assert sum(isinstance(m, nn.Dropout) for m in net.modules()) == max(hidden_fc, 1)
    x = torch.randn(4, 1, 28, 28)
    assert not torch.equal(net.train()(x), net(x))
    assert torch.equal(net.eval()(x), net(x))


def test_unknown_norm_or_bad_dropout_is_refused():
    with pytest.raises(ValueError, match="norm"):
        ThreeConv(norm="layer")
    with pytest.raises(ValueError, match="dropout"):
        ThreeConv(dropout=1.0)
