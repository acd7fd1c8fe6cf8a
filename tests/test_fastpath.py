"""The fast-path options: parsing, what "auto" means, and that they keep the arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from endebias.cli.main import build_parser, config_from_args
from endebias.methods import build_method
from endebias.models import build_model
from endebias.regularizer import end_terms
from endebias.training import fastpath
from endebias.training.config import TrainConfig, make_config
from endebias.training.fastpath import FastPath
from endebias.training.fit import fit
from endebias.training.records import read_metrics

CPU = torch.device("cpu")


def test_switches_accept_yaml_booleans_and_reject_others() -> None:
    config = TrainConfig(amp=True, compile=False)
    assert (config.amp, config.compile, config.channels_last) == ("on", "off", "auto")
    with pytest.raises(ValueError, match="compile must be one of auto, on, off"):
        TrainConfig(compile="fast")


def test_cli_flags_reach_the_config() -> None:
    args = build_parser().parse_args(
        ["train", "--amp", "off", "--compile", "on", "--channels-last", "off"]
    )
    config = config_from_args(args)
    assert (config.amp, config.compile, config.channels_last) == ("off", "on", "off")
    default = config_from_args(build_parser().parse_args(["train"]))
    assert (default.amp, default.compile, default.channels_last) == ("auto", "auto", "auto")


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16"])
def test_auto_turns_bf16_on_for_a_cpu_with_native_bf16(monkeypatch, flag: str) -> None:
    monkeypatch.setattr(fastpath, "cpu_bf16_native", lambda: flag)
    assert FastPath.resolve(CPU) == FastPath(amp=True, compile=False, channels_last=False)
    assert FastPath.resolve(CPU, amp="off") == FastPath()


def test_auto_leaves_a_cpu_without_native_bf16_in_float32(monkeypatch) -> None:
    monkeypatch.setattr(fastpath, "cpu_bf16_native", lambda: None)
    assert FastPath.resolve(CPU) == FastPath()
    forced = FastPath.resolve(CPU, amp="on", compile="off", channels_last="on")
    assert forced == FastPath(amp=True, compile=False, channels_last=True)


def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch, tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    real_open = open

    def fake_open(path, *args, **kwargs):
        return real_open(cpuinfo if path == "/proc/cpuinfo" else path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 avx512_vnni\n")
    assert fastpath.cpu_bf16_native() == "avx512_bf16"
    cpuinfo.write_text("flags\t\t: fpu sse avx2 amx_tile amx_bf16 avx512_bf16\n")
    assert fastpath.cpu_bf16_native() == "amx_bf16"
    cpuinfo.write_text("flags\t\t: fpu sse avx2 avx512f\n")
    assert fastpath.cpu_bf16_native() is None


def test_channels_last_converts_weights_and_inputs() -> None:
    model = build_model("simple-conv", num_classes=10, input_shape=(3, 28, 28))
    fast = FastPath(channels_last=True)
    fast.apply(model)
    conv = model.blocks[0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    batch = fast.inputs(torch.zeros(2, 3, 28, 28))
    assert batch.is_contiguous(memory_format=torch.channels_last)
    assert fast.inputs(torch.zeros(2, 5)).shape == (2, 5)  # non-image inputs pass through


def test_bf16_autocast_keeps_the_end_loss_close() -> None:
    torch.manual_seed(0)
    model = build_model("simple-conv", num_classes=4, input_shape=(3, 8, 8), kernel_size=3)
    labels = torch.arange(16) % 4
    method = build_method("end", model=model, num_targets=4, num_biases=4,
                          train_targets=labels, train_biases=labels)
    inputs, biases = torch.randn(16, 3, 8, 8), torch.roll(labels, 1)
    exact, _, exact_parts = method.training_step(inputs, labels, biases, labels)
    with FastPath(amp=True).autocast(CPU):
        mixed, _, mixed_parts = method.training_step(inputs, labels, biases, labels)
    assert mixed_parts["r_perp"].dtype == torch.float32  # summed in float32 under autocast
    torch.testing.assert_close(mixed, exact, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(mixed_parts["r_par"], exact_parts["r_par"], rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("pairs", ["all", "reference"])
def test_end_terms_under_autocast_are_computed_in_float32(pairs: str) -> None:
    """Float32 features under autocast: both pair selections give the float32 terms to
    float32 rounding (the reference path's Gram product must not drop to bf16)."""
    generator = torch.Generator().manual_seed(3)
    features = torch.nn.functional.normalize(torch.randn(48, 32, generator=generator), dim=1)
    targets, biases = torch.randint(4, (2, 48), generator=generator)
    exact = end_terms(features, targets, biases, pairs=pairs, num_targets=4, num_biases=4)
    with FastPath(amp=True).autocast(CPU):
        mixed = end_terms(features, targets, biases, pairs=pairs, num_targets=4, num_biases=4)
    for ours, theirs in zip(mixed, exact, strict=True):
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_compile_and_channels_last_train_like_eager(tmp_path: Path) -> None:
    """One epoch of EnD on the synthetic benchmark with the options forced on (CPU): the
    same records as the eager path, to float tolerance."""
    results = {}
    for name, switch in (("eager", "off"), ("fast", "on")):
        config = make_config(
            "quick", dataset="synthetic", method="end", epochs=1, device="cpu",
            compile=switch, channels_last=switch, amp="off",
        )
        fit(config, tmp_path / name, progress=False)
        results[name] = read_metrics(tmp_path / name)[0]
    for key in ("train_loss", "train_r_perp", "train_r_par", "valid_acc", "unbiased_test_acc"):
        assert results["fast"][key] == pytest.approx(results["eager"][key], rel=1e-3, abs=1e-4), key


def test_records_name_the_arithmetic_auto_chose(tmp_path: Path, monkeypatch) -> None:
    """config.json keeps "auto"; each epoch's record says what it resolved to here."""
    for flag, expected in ((None, "none"), ("avx512_bf16", "amp")):
        monkeypatch.setattr(fastpath, "cpu_bf16_native", lambda flag=flag: flag)
        config = make_config("quick", dataset="synthetic", method="end", epochs=1,
                             device="cpu", dataset_options={"train_size": 64, "eval_size": 32})
        run_dir = tmp_path / expected
        fit(config, run_dir, progress=False)
        assert config.amp == "auto"
        assert [r["fast_path"] for r in read_metrics(run_dir)] == [expected]


@pytest.mark.slow
@pytest.mark.parametrize("name, second", [("rubi", "bias_model"), ("lff", "biased_model")])
def test_compile_covers_every_network_a_method_trains(name: str, second: str) -> None:
    """``--compile on`` compiles the method's second network too (on CPU it costs more per
    step than the main one, benchmarks/bench_compile.py), keeps the parameter names that
    checkpoints use, and steps as the eager method does from the same weights."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.rand(16, 3, 12, 12, generator=generator)
    targets = torch.randint(3, (16,), generator=generator)
    biases = targets.clone()

    def make():
        torch.manual_seed(0)
        network = lambda model, **options: build_model(  # noqa: E731
            model, num_classes=3, input_shape=(3, 12, 12), **options)
        return build_method(
            name, model=network("simple-conv", channels=[4, 8], kernel_size=3),
            num_targets=3, num_biases=3, train_targets=targets, train_biases=biases,
            input_shape=(3, 12, 12), build_network=network,
            **({"bias_model_options": {"channels": [4, 8]}} if name == "rubi" else {}))

    eager, compiled = make(), make()
    FastPath(compile=True).apply(compiled)
    assert getattr(eager, second) in eager.networks()
    for network in compiled.networks():
        assert network._compiled_call_impl is not None  # what nn.Module.compile sets
    assert getattr(eager.model, "_compiled_call_impl", None) is None
    assert list(compiled.state_dict()) == list(eager.state_dict())
    outputs = []
    for method in (eager, compiled):
        loss, logits, _ = method.training_step(inputs, targets, biases, torch.arange(16))
        loss.backward()
        outputs.append((loss.detach(), logits.detach()))
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-5)
    for (key, theirs), (_, ours) in zip(eager.named_parameters(), compiled.named_parameters(),
                                        strict=True):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-3, atol=1e-5, msg=key)
