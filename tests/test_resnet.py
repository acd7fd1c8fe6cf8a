"""ResNet-18: torchvision-compatible state dict, Tanh at the end, normalised features."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from endebias.hooks import capture_features
from endebias.models import build_model


def torchvision_resnet18_keys(num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
    """The state-dict keys and shapes of torchvision's resnet18, written out from its
    architecture (torchvision itself is not installable here)."""
    keys: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}

    def bn(prefix: str, width: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{prefix}.{name}"] = (width,)
        keys[f"{prefix}.num_batches_tracked"] = ()

    bn("bn1", 64)
    previous = 64
    for stage, width in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            prefix = f"layer{stage}.{block}"
            in_channels = previous if block == 0 else width
            keys[f"{prefix}.conv1.weight"] = (width, in_channels, 3, 3)
            bn(f"{prefix}.bn1", width)
            keys[f"{prefix}.conv2.weight"] = (width, width, 3, 3)
            bn(f"{prefix}.bn2", width)
            if block == 0 and stage > 1:
                keys[f"{prefix}.downsample.0.weight"] = (width, previous, 1, 1)
                bn(f"{prefix}.downsample.1", width)
        previous = width
    keys["fc.weight"] = (num_classes, 512)
    keys["fc.bias"] = (num_classes,)
    return keys


def test_state_dict_matches_torchvision_names_and_shapes():
    model = build_model("resnet18", num_classes=1000, input_shape=(3, 64, 64))
    expected = torchvision_resnet18_keys()
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert list(got) == list(expected)  # same order too, as torchvision writes it
    assert got == expected
    assert sum(p.numel() for p in model.parameters()) == 11_689_512  # torchvision's count


def test_pretrained_weights_load_unchanged_except_a_different_classifier(tmp_path):
    generator = torch.Generator().manual_seed(0)
    weights = {
        k: (torch.randint(0, 100, s, generator=generator) if k.endswith("tracked")
            else torch.randn(s, generator=generator))
        for k, s in torchvision_resnet18_keys().items()
    }
    path = tmp_path / "resnet18.pth"
    torch.save(weights, path)
    model = build_model("resnet18", num_classes=2, input_shape=(3, 64, 64),
                        pretrained_path=str(path))
    state = model.state_dict()
    for key, value in weights.items():
        if not key.startswith("fc."):
            assert torch.equal(state[key], value), key
    assert state["fc.weight"].shape == (2, 512)
    same_size = build_model("resnet18", num_classes=1000, input_shape=(3, 64, 64),
                            pretrained_path=str(path))
    assert torch.equal(same_size.state_dict()["fc.weight"], weights["fc.weight"])

    del weights["layer3.1.bn2.running_var"]
    torch.save(weights, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"partial.pth: not a ResNet-18.*layer3.1.bn2.running_var"):
        build_model("resnet18", num_classes=2, input_shape=(3, 64, 64),
                    pretrained_path=str(tmp_path / "partial.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth: cannot read weights"):
        build_model("resnet18", num_classes=2, input_shape=(3, 64, 64),
                    pretrained_path=str(tmp_path / "junk.pth"))


def test_last_activation_is_tanh_and_features_are_normalised():
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=2, input_shape=(3, 32, 32)).eval()
    last = model.layer4[1]
    assert isinstance(last.out_activation, nn.Tanh) and isinstance(last.relu, nn.ReLU)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 1 + 8 + 7  # stem, one inside each block, after the adds but the last
    with capture_features(model, model.feature_layer) as captured, torch.no_grad():
        logits = model(torch.randn(4, 3, 32, 32))
    assert logits.shape == (4, 2)
    features = captured.get()
    assert features.shape == (4, 512)
    assert torch.allclose(features.norm(dim=1), torch.ones(4), atol=1e-5)
    with capture_features(model, "avgpool") as pooled, torch.no_grad():
        model(torch.randn(4, 3, 32, 32))
    assert pooled.get().abs().max() <= 1.0  # pooled Tanh outputs
