"""The tested examples of docs/library.md, run as written: the loss's calls, torch.compile,
PyTorch Lightning and the Hugging Face Trainer, each on a tiny model and synthetic data
(seconds); and the README's own-loop snippet."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "library.md"


def example(name: str) -> str:
    """The Python block right after ``<!-- tested: name -->`` in docs/library.md."""
    match = re.search(rf"<!-- tested: {name} -->\n```python\n(.*?)```", DOC.read_text(), re.S)
    assert match, f"docs/library.md has no tested example {name!r}"
    return match.group(1)


def run_example(name: str, **given) -> dict:
    namespace: dict = {"__name__": f"library_md_{name}", **given}
    exec(compile(example(name), f"docs/library.md[{name}]", "exec"), namespace)
    return namespace


def labelled_features(size: int = 40) -> dict:
    generator = torch.Generator().manual_seed(size)
    return {"features": torch.randn(size, 3, 4, generator=generator),
            "targets": torch.randint(10, (size,), generator=generator),
            "biases": torch.randint(10, (size,), generator=generator)}


def needs(package: str):
    missing = importlib.util.find_spec(package) is None
    return pytest.mark.skipif(missing, reason=f"{package} is not installed (requirements-dev.txt "
                                              "pins it; it is optional for endebias)")


def test_every_tested_example_is_run_here():
    names = set(re.findall(r"<!-- tested: (\w+) -->", DOC.read_text()))
    assert names == {"loss", "compile", "lightning", "transformers"}


def test_loss_example_calls_agree():
    given = labelled_features()
    namespace = run_example("loss", **given)
    r_perp, r_par = namespace["r_perp"], namespace["r_par"]  # the last line's end_terms
    assert namespace["loss"].item() == pytest.approx(0.1 * r_perp.item() + 0.1 * r_par.item())
    assert namespace["criterion"](**given).item() == pytest.approx(namespace["loss"].item())


def test_readme_snippet_trains_a_model_with_a_layer4():
    text = (DOC.parents[1] / "README.md").read_text()
    section = text[text.index("## EnD in your own training loop"):]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)

    class MyNet(torch.nn.Module):  # the reader's model: a layer4 among others
        def __init__(self) -> None:
            super().__init__()
            self.layer4 = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8))
            self.fc = torch.nn.Linear(8, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.layer4(x)))

    batches = [tuple(labelled_features(16 + step).values()) for step in range(3)]
    namespace = {"MyNet": MyNet, "loader": batches}
    exec(compile(snippet, "README.md[own training loop]", "exec"), namespace)
    end = namespace["end"]
    assert torch.isfinite(end.loss) and 0 <= end.r_perp.item() <= 1
    assert namespace["model"].layer4[1].weight.grad is not None


@pytest.mark.slow  # inductor's first compile: C++ code generation, ~20 s on 2 cores
def test_compile_example_trains_as_one_graph():
    namespace = run_example("compile")
    loss = namespace["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss)


@needs("pytorch_lightning")
def test_lightning_example_trains_with_the_end_terms_logged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Lightning may write lightning_logs/ beside it
    namespace = run_example("lightning")
    trainer = namespace["trainer"]
    assert trainer.global_step == 8  # 2 epochs of 256 samples in batches of 64
    metrics = trainer.callback_metrics
    assert 0 <= metrics["r_perp"] <= 1 and 0 <= metrics["r_par"] <= 1


@needs("transformers")
@needs("accelerate")
def test_transformers_trainer_example_trains_with_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # its output_dir
    namespace = run_example("transformers")
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 8
    terms = trainer.end_terms  # the last step's, read from the encoder's 16 features
    assert 0 <= terms.r_perp.item() <= 1 and 0 <= terms.r_par.item() <= 1
    assert terms.loss.item() == pytest.approx(0.1 * terms.r_perp.item() + 0.1 * terms.r_par.item())
