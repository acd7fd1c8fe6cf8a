import pytest
import torch
from torch import nn

from endebias.models import build_model, model_names
from endebias.models.simple_conv import SimpleConvNet
from endebias.training.config import PAPER, make_config


def test_paper_simple_conv_matches_the_protocol():
    model = build_model(
        "simple-conv", num_classes=10, input_shape=(3, 28, 28), **PAPER["model_options"]
    )
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64, 128]
    assert all(c.kernel_size == (7, 7) and c.padding == (3, 3) for c in convs)
    activations = [m for m in model.blocks if isinstance(m, nn.ReLU | nn.Tanh)]
    assert [type(a) for a in activations] == [nn.ReLU, nn.ReLU, nn.ReLU, nn.Tanh]
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    assert model.fc.in_features == 128 and model.fc.out_features == 10


def test_kaiming_fan_out_initialisation():
    torch.manual_seed(0)
    model = SimpleConvNet(channels=(64, 128), kernel_size=7)
    weight = model.blocks[3].weight  # second conv: fan_out = 128 * 49
    expected_std = (2.0 / (128 * 49)) ** 0.5
    assert weight.std().item() == pytest.approx(expected_std, rel=0.05)


def test_features_are_unit_norm_and_logits_have_the_class_count():
    model = SimpleConvNet(kernel_size=3, pool_after=(0, 1)).eval()
    captured = {}
    model.pattern_norm.register_forward_hook(lambda m, i, o: captured.setdefault("z", o))
    logits = model(torch.randn(5, 3, 28, 28))
    assert logits.shape == (5, 10)
    assert torch.allclose(captured["z"].norm(dim=1), torch.ones(5), atol=1e-6)
    assert model.feature_layer == "pattern_norm"


def test_rebias_variant_classifies_the_raw_pooled_features():
    """normalize_features=False: logits = fc(pooled), EnD's layer still unit-norm; the same
    weights give fc(pooled / ||pooled||) by default. Checked against a hand-made forward."""
    torch.manual_seed(0)
    official = SimpleConvNet(channels=(8, 16), kernel_size=3).eval()
    rebias = SimpleConvNet(channels=(8, 16), kernel_size=3, normalize_features=False).eval()
    rebias.load_state_dict(official.state_dict())  # same parameters: only the wiring differs
    images = torch.randn(4, 3, 28, 28)
    pooled = official.blocks(images).mean(dim=(2, 3))
    captured = {}
    rebias.pattern_norm.register_forward_hook(lambda m, i, o: captured.setdefault("z", o))
    assert torch.allclose(rebias(images), rebias.fc(pooled), atol=1e-5)
    unit = pooled / pooled.norm(dim=1, keepdim=True)
    assert torch.allclose(official(images), official.fc(unit), atol=1e-5)
    assert torch.allclose(captured["z"], unit, atol=1e-5)
    assert not torch.allclose(rebias(images), official(images), atol=1e-3)


def test_the_variant_is_a_model_option_and_is_validated():
    model = build_model("simple-conv", num_classes=10, input_shape=(3, 28, 28),
                        normalize_features=False)
    assert model.normalize_features is False
    with pytest.raises(ValueError, match="normalize_features must be true or false"):
        SimpleConvNet(normalize_features="no")


def test_registry_errors_name_the_model():
    assert "simple-conv" in model_names()
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        build_model("nope", num_classes=2, input_shape=(3, 8, 8))
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        SimpleConvNet(kernel_size=4)


def test_paper_preset_is_the_protocol():
    config = make_config("paper", method="end", method_options={"alpha": 0.1})
    assert (config.epochs, config.batch_size, config.lr, config.weight_decay) == (
        80,
        256,
        1e-3,
        1e-4,
    )
    assert (config.lr_step, config.lr_gamma, config.seed) == (20, 0.1, 42)
    # The official code's EnD defaults, alpha given explicitly here.
    assert config.method_options == {"alpha": 0.1, "beta": 0.1, "pairs": "reference"}
    assert config.dataset_options == {}


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"lr": -1.0}, "lr"),
        ({"lr_gamma": 2.0}, "lr_gamma"),
        ({"device": "tpu"}, "device"),
        ({"train_subset": 0}, "train_subset"),
        ({"save_features": -1}, "save_features"),
        ({"learning_rate": 0.1}, "learning_rate"),
    ],
)
def test_bad_config_values_name_the_option(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_config("quick", **overrides)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        make_config("fast")


def test_overriding_one_model_option_keeps_the_presets_others():
    config = make_config("quick", model_options={"channels": [8, 16, 32, 64]})
    assert config.model_options["channels"] == [8, 16, 32, 64]
    assert config.model_options["kernel_size"] == 3
    assert config.model_options["pool_after"] == [0, 1]


def test_another_model_does_not_inherit_the_presets_simple_conv_options():
    config = make_config("quick", model="mlp", model_options={"hidden": [8]})
    assert config.model_options == {"hidden": [8]}
    assert config.epochs == 6
