"""The tabular benchmark: CSV reading, bias binning, settings, standardisation, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from endebias.data import build_dataset
from endebias.hooks import capture_features
from endebias.models import build_model

PIMA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pima" / "pima.csv"


def _write(path: Path, n: int = 200, seed: int = 0) -> Path:
    """A table where the target follows x1 and (mostly) age, with a categorical column."""
    rng = np.random.default_rng(seed)
    age = rng.integers(20, 70, n)
    x1 = rng.normal(size=n)
    label = np.where(x1 + (age > 45) + rng.normal(scale=0.5, size=n) > 0.8, "Yes", "No")
    sex = rng.choice(["F", "M"], n)
    lines = ["x1,age,sex,type"]
    lines += [f"{a:.4f},{b},{s},{t}" for a, b, s, t in zip(x1, age, sex, label, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _build(path: Path, **options):
    defaults = {"path": str(path), "target": "type", "bias": "age", "bias_binning": "median",
                "features": ["x1", "age"]}
    return build_dataset("tabular", **(defaults | options))


def test_median_binning_uses_training_rows_and_features_use_training_statistics(tmp_path):
    bench = _build(_write(tmp_path / "t.csv"), seed=1)
    raw = np.loadtxt(tmp_path / "t.csv", delimiter=",", skiprows=1, usecols=(0, 1))
    cut = bench.info["bias_cuts"][0]
    assert bench.bias_names == [f"age<={cut:g}", f"age>{cut:g}"]
    # Features are standardised with the training split: mean 0, std 1 there only.
    train = bench.train.inputs.double()
    assert torch.allclose(train.mean(0), torch.zeros(2, dtype=torch.double), atol=1e-5)
    assert torch.allclose(train.std(0, unbiased=False), torch.ones(2, dtype=torch.double),
                          atol=1e-5)
    ages = bench.train.inputs[:, 1].double() * bench.info["feature_std"][1]
    ages += bench.info["feature_mean"][1]
    assert set(np.round(ages.numpy()).astype(int)) <= set(raw[:, 1].astype(int))
    # The bias label is the age bin; the cut is the median age of the training pool,
    # so it splits the training rows (nearly) in half.
    assert torch.equal(bench.train.biases, (ages > cut + 1e-6).long())
    assert abs(float(bench.train.biases.float().mean()) - 0.5) < 0.1
    assert bench.target_names == ["No", "Yes"] and bench.prepare(train) is train
    assert bench.train.inputs.dtype == torch.float32
    assert list(bench.evaluations)[:3] == ["valid", "biased_test", "unbiased_test"]
    # Deterministic for a seed, different for another.
    again, other = _build(tmp_path / "t.csv", seed=1), _build(tmp_path / "t.csv", seed=2)
    assert torch.equal(again.train.inputs, bench.train.inputs)
    assert not torch.equal(other.train.targets, bench.train.targets)


def test_threshold_quantile_and_categorical_bias(tmp_path):
    path = _write(tmp_path / "t.csv")
    by_threshold = _build(path, bias_binning="threshold", bias_threshold=40)
    assert by_threshold.bias_names == ["age<=40", "age>40"]
    quartiles = _build(path, bias_binning="quantiles", bias_quantiles=4)
    assert quartiles.num_biases == 4 and len(quartiles.info["bias_cuts"]) == 3
    counts = torch.bincount(quartiles.train.biases, minlength=4)
    assert counts.min() > 0.15 * len(quartiles.train)
    by_sex = _build(path, bias="sex", bias_binning="categorical", features=None)
    assert by_sex.bias_names == ["F", "M"]
    # The categorical bias column is left out of the features; the numeric ones stay.
    assert by_sex.info["features"] == ["x1", "age"]


def test_imbalance_keeps_k_minority_rows_and_balances_the_test(tmp_path):
    bench = _build(_write(tmp_path / "t.csv", n=400), setting="imbalance", minority_bias=1,
                   minority_size=7)
    assert int((bench.train.biases == 1).sum()) == 7
    assert int((bench.train.biases == 0).sum()) > 50
    for name in ("valid", "unbiased_test"):
        counts = torch.bincount(bench.evaluations[name].biases, minlength=2)
        assert counts[0] == counts[1] > 0
    for code in range(2):
        alone = bench.evaluations[f"unbiased_test_bias{code}"]
        assert alone.biases.eq(code).all()
        assert len(alone) == len(bench.evaluations["unbiased_test"]) // 2


def test_association_trains_where_bias_and_target_agree(tmp_path):
    path = _write(tmp_path / "t.csv", n=400)
    bench = _build(path, setting="association")
    assert torch.equal(bench.train.biases, bench.train.targets)
    assert torch.equal(bench.evaluations["biased_test"].biases,
                       bench.evaluations["biased_test"].targets)
    unbiased = bench.evaluations["unbiased_test"]
    assert (unbiased.biases != unbiased.targets).all()
    # No row is both trained on and tested on; the valid rows are in neither.
    keys = {name: {tuple(r) for r in split.inputs.tolist()}
            for name, split in [("train", bench.train), *bench.evaluations.items()]}
    assert not keys["train"] & keys["unbiased_test"]
    assert not keys["valid"] & (keys["train"] | keys["unbiased_test"] | keys["biased_test"])
    reverse = _build(path, setting="association", train_on="disagree")
    assert (reverse.train.biases != reverse.train.targets).all()
    assert (reverse.evaluations["unbiased_test"].biases
            == reverse.evaluations["unbiased_test"].targets).all()


def test_bad_csv_input_names_the_column(tmp_path):
    path = _write(tmp_path / "t.csv")
    with pytest.raises(ValueError, match="no bias column 'agee'"):
        _build(path, bias="agee")
    with pytest.raises(ValueError, match="no target column 'label'"):
        _build(path, target="label")
    with pytest.raises(ValueError, match="feature column 'sex' must be numeric; line 2"):
        _build(path, features=["x1", "sex"])
    with pytest.raises(ValueError, match="bias column 'sex' must be numeric"):
        _build(path, bias="sex", bias_binning="median")
    with pytest.raises(ValueError, match="bias column 'age': group 'age>80' is empty in the train"):
        _build(path, bias_binning="threshold", bias_threshold=80)
    with pytest.raises(ValueError, match="bias column 'sex'.*2 .*target column 'type' has 3"):
        text = path.read_text().replace(",No\n", ",Maybe\n", 5)
        (tmp_path / "three.csv").write_text(text)
        _build(tmp_path / "three.csv", bias="sex", bias_binning="categorical",
               setting="association")
    broken = tmp_path / "broken.csv"
    broken.write_text("x1,age,type\n1.0,30,No\n2.0,,Yes\n" + "3.0,40,No\n" * 20)
    with pytest.raises(ValueError, match="feature column 'age' must be numeric; line 3 has ''"):
        _build(broken, bias="x1", bias_binning="median")
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("x1,age,type\n1.0,30,No\n2.0,Yes\n")
    with pytest.raises(ValueError, match="line 3 has 2 fields"):
        _build(ragged)
    with pytest.raises(ValueError, match="unknown option.*colour"):
        _build(path, colour=1)
    with pytest.raises(ValueError, match="minority_size must be an integer in 1.."):
        _build(path, setting="imbalance", minority_size=0)
    tiny = tmp_path / "tiny.csv"
    tiny.write_text("x1,age,type\n1.0,30,No\n2.0,50,Yes\n3.0,20,Yes\n")
    with pytest.raises(ValueError, match=r"column 'age': group 'age.*' is empty in the \w+ split"):
        _build(tiny)


def test_mlp_exposes_normalised_features_and_trains(tmp_path):
    bench = _build(_write(tmp_path / "t.csv", n=300))
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=2, input_shape=bench.input_shape, hidden=[16, 8])
    with capture_features(model, model.feature_layer) as captured:
        logits = model(bench.train.inputs)
    assert logits.shape == (len(bench.train), 2)
    assert torch.allclose(captured.get().norm(dim=1), torch.ones(len(bench.train)), atol=1e-5)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(model(bench.train.inputs), bench.train.targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    test = bench.evaluations["biased_test"]
    accuracy = (model(test.inputs).argmax(1) == test.targets).float().mean()
    assert accuracy > 0.75


@pytest.mark.skipif(not PIMA.is_file(), reason=f"real Pima data not at {PIMA}")
def test_real_pima_loads_with_age_split_at_the_training_median():
    bench = build_dataset("tabular", path=str(PIMA), target="type", bias="age",
                          bias_binning="median", setting="association", seed=0)
    assert bench.input_shape == (7,) and bench.target_names == ["No", "Yes"]
    assert bench.info["bias_cuts"][0] in range(24, 34)
    total = len(bench.train) + sum(len(bench.evaluations[k]) for k in
                                   ("valid", "biased_test", "unbiased_test"))
    assert total <= 532


def test_trains_through_the_unchanged_trainer(tmp_path):
    from endebias.training.config import TrainConfig
    from endebias.training.fit import fit

    path = _write(tmp_path / "t.csv", n=300)
    options = {"path": str(path), "target": "type", "bias": "age", "bias_binning": "median",
               "setting": "imbalance", "minority_size": 5, "features": ["x1", "age"]}
    config = TrainConfig(dataset="tabular", dataset_options=options, model="mlp",
                         model_options={"hidden": [16, 8]}, method="end",
                         method_options={"alpha": 1.0, "beta": 1.0}, epochs=2, batch_size=32,
                         device="cpu")
    best = fit(config, tmp_path / "run", progress=False)
    for key in ("valid_acc", "unbiased_test_acc", "unbiased_test_bias0_acc",
                "unbiased_test_bias1_acc", "biased_test_acc_worst_group"):
        assert 0.0 <= best[key] <= 1.0


def test_a_table_without_bias_column_has_targets_only(tmp_path):
    path = _write(tmp_path / "t.csv", n=200)
    bench = build_dataset("tabular", path=str(path), target="type", features=["x1", "age"],
                          seed=3)
    assert not bench.has_bias_labels and bench.num_biases == 1 and bench.bias_names == ["all"]
    assert list(bench.evaluations) == ["valid", "biased_test"]
    splits = [bench.train, *bench.evaluations.values()]
    assert sum(len(s) for s in splits) == 200  # nothing cut: no group to balance
    assert all(int(s.biases.abs().sum()) == 0 for s in splits)
    train = bench.train.inputs.double()
    assert torch.allclose(train.mean(0), torch.zeros(2, dtype=torch.double), atol=1e-5)
    # The same rows as the table with its bias column in the plain setting.
    with_bias = _build(path, seed=3, bias_binning="median")
    assert torch.equal(with_bias.train.targets, bench.train.targets)
    with pytest.raises(ValueError, match="setting='imbalance' needs a bias column"):
        build_dataset("tabular", path=str(path), target="type", setting="imbalance")
    with pytest.raises(ValueError, match="needs the options path=<csv file>, target=<column>"):
        build_dataset("tabular", path=str(path))


def _no_bias_config(path: Path, method: str, **fields):
    from endebias.training.config import TrainConfig

    options = {"path": str(path), "target": "type", "features": ["x1", "age"]}
    return TrainConfig(dataset="tabular", dataset_options=options, model="mlp",
                       model_options={"hidden": [16, 8]}, method=method, epochs=2,
                       batch_size=32, device="cpu", **fields)


def test_without_bias_labels_end_needs_pseudo_ones(tmp_path, capsys):
    from endebias.cli.main import main
    from endebias.report.comparison import find_runs, method_table
    from endebias.training import records
    from endebias.training.bias_labels import AGREEMENT
    from endebias.training.fit import fit
    from endebias.training.pseudo_label_stages import LABELS, read_labels

    path = _write(tmp_path / "t.csv", n=300)
    # Vanilla reads no bias labels: it trains as on any table.
    assert 0 <= fit(_no_bias_config(path, "vanilla"), tmp_path / "vanilla",
                    progress=False)["biased_test_acc"] <= 1
    # EnD on the (missing) given labels: one line saying what to do, no run folder.
    with pytest.raises(ValueError, match="no bias labels .* --bias-labels pseudo"):
        fit(_no_bias_config(path, "end"), tmp_path / "given", progress=False)
    assert not (tmp_path / "given").exists()
    argv = ["train", "--dataset", "tabular", "--model", "mlp", "--method", "end",
            "--epochs", "1", "--no-progress", "--out", str(tmp_path / "cli"),
            "--dataset-option", f"path={path}", "--dataset-option", "target=type",
            "--dataset-option", "features=[x1, age]"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("endebias: error: dataset 'tabular' has no bias labels")
    assert "\n" not in err and "Traceback" not in err and not (tmp_path / "cli").exists()
    # On pseudo labels EnD trains; there is nothing to score the labels against.
    run = tmp_path / "pseudo"
    config = _no_bias_config(path, "end", bias_labels="pseudo",
                             pseudo_options={"stage1_epochs": 2})
    best = fit(config, run, progress=False)
    assert 0 <= best["biased_test_acc"] <= 1 and "unbiased_test_acc" not in best
    labels = read_labels(run / LABELS)
    assert labels is not None and len(labels) == len(read_train_targets(config))
    agreement = records.read_json(run / AGREEMENT)
    assert agreement == {"num_pseudo_labels": len(np.unique(labels)), "labelling": "predictions"}
    table = method_table(find_runs([run]))
    assert "[pseudo: predictions]" in table and "| - | - |" in table
    # no headline of unbiased accuracies when no run has one
    assert table.startswith("| dataset | method |") and "Unbiased test accuracy" not in table
    # `results RUN` on the pseudo-label run: its own row, not its stage 1's
    from endebias.report.results import rows_from_runs

    [row] = rows_from_runs(run)
    assert row.id == "pseudo" and row.biased_test_acc == best["biased_test_acc"]


def read_train_targets(config):
    from endebias.training.fit import load_benchmark

    return load_benchmark(config, data_dir=None, device="cpu").train.targets
