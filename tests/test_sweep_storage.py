"""Storage URLs (passwords never shown), study creation, samplers, seeds and pruners."""

from __future__ import annotations

import optuna
import pytest

from endebias.sweeps import storage as sweep_storage
from endebias.sweeps.sweep_file import parse_sweep

PAPER = {"method": "bayes", "parameters": {
    "alpha": {"distribution": "uniform", "min": 0.0, "max": 1.0},
    "beta": {"distribution": "uniform", "min": 0.0, "max": 1.0},
    "preset": {"value": "paper"}}}


def spec_of(mapping: dict, **extra):
    return parse_sweep({**mapping, **extra}, source="test.yaml")


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://alice:s3cr:t@db.example:5432/sweeps", "postgresql://alice:***@db.example:5432/sweeps"),
        ("postgresql+psycopg2://bob:p%40ss@10.0.0.2/x?sslmode=require",
         "postgresql+psycopg2://bob:***@10.0.0.2/x?sslmode=require"),
        ("postgresql://carol@localhost/db", "postgresql://carol@localhost/db"),
        ("postgresql://localhost/db?user=dave&password=hunter2&x=1",
         "postgresql://localhost/db?user=dave&password=***&x=1"),
        ("sqlite:///runs/sweeps.db", "sqlite:///runs/sweeps.db"),
    ],
)
def test_mask_url_hides_passwords(url, masked):
    assert sweep_storage.mask_url(url) == masked


def test_unreachable_database_is_one_line_without_the_password():
    url = "postgresql://endebias:TopSecret42@127.0.0.1:1/nowhere"
    with pytest.raises(RuntimeError) as caught:
        sweep_storage.open_storage(url, wait=0)
    message = str(caught.value)
    assert "TopSecret42" not in message and "\n" not in message
    assert message.startswith("cannot open sweep storage postgresql://endebias:***@127.0.0.1:1/")


def test_a_missing_sqlite_file_is_not_created_by_readers(tmp_path, capsys, monkeypatch):
    from endebias.cli.main import main

    monkeypatch.delenv(sweep_storage.STORAGE_ENV, raising=False)
    url = f"sqlite:///{tmp_path}/runs/sweeps.db"
    with pytest.raises(FileNotFoundError, match="no sweep storage at .*create a sweep first"):
        sweep_storage.open_storage(url)
    assert main(["results", "some-id", "--runs", str(tmp_path / "runs")]) == 2
    assert "no sweep storage" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_bad_storage_scheme():
    with pytest.raises(ValueError, match="expected sqlite:///PATH or postgresql"):
        sweep_storage.open_storage("redis://user:pw@host")


def test_default_storage_is_sqlite_under_runs(monkeypatch, tmp_path):
    monkeypatch.delenv(sweep_storage.STORAGE_ENV, raising=False)
    assert sweep_storage.default_storage(tmp_path / "runs") == f"sqlite:///{tmp_path}/runs/sweeps.db"
    monkeypatch.setenv(sweep_storage.STORAGE_ENV, "postgresql://h/db")
    assert sweep_storage.default_storage("runs") == "postgresql://h/db"


def test_create_load_and_rebuild_the_sweep(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    spec = spec_of(PAPER, name="paper sweep")
    sweep_id = sweep_storage.create_sweep(spec, storage=url)
    assert sweep_id.startswith("test-")
    with pytest.raises(ValueError, match="already exists"):
        sweep_storage.create_sweep(spec, storage=url, sweep_id=sweep_id)
    study = sweep_storage.load_study(sweep_id, storage=url)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    rebuilt = sweep_storage.sweep_spec(study)
    assert rebuilt.definition == spec.definition and rebuilt.name == "paper sweep"
    assert rebuilt.parameters == spec.parameters
    expected = f"no sweep 'nope' in sqlite:///{tmp_path}/s.db; known: {sweep_id}"
    with pytest.raises(ValueError, match=expected):
        sweep_storage.load_study("nope", storage=url)


def test_samplers_and_agent_seeds():
    bayes = spec_of(PAPER)
    tpe = sweep_storage.build_sampler(bayes, seed=1)
    assert isinstance(tpe, optuna.samplers.TPESampler)
    assert isinstance(sweep_storage.build_sampler(spec_of(PAPER, method="random"), seed=1),
                      optuna.samplers.RandomSampler)
    gp_spec = spec_of(PAPER, optuna={"sampler": "gp"})
    try:
        import scipy  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="needs scipy"):
            sweep_storage.build_sampler(gp_spec, seed=1)
    else:
        assert isinstance(sweep_storage.build_sampler(gp_spec, seed=1), optuna.samplers.GPSampler)
    # No base seed: fresh entropy in every agent. A base seed: base + agent id, never shared.
    assert sweep_storage.agent_seed(bayes, 3) is None
    seeded = spec_of(PAPER, optuna={"seed": 100})
    assert sweep_storage.agent_seed(seeded, 0) == 100 and sweep_storage.agent_seed(seeded, 2) == 102
    assert sweep_storage.agent_seed(seeded, None) != 100


def _pruned_at(pruner: optuna.pruners.BasePruner, epochs: int) -> list[int | None]:
    """The epoch at which each of 4 hopeless trials is pruned (None: never), after 12 good
    complete trials."""
    study = optuna.create_study(direction="maximize", pruner=pruner,
                                sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(12):
        trial = study.ask()
        for epoch in range(1, epochs + 1):
            trial.report(0.9, epoch)
            assert not trial.should_prune()  # (successive halving records rungs here)
        study.tell(trial, 0.9)
    pruned: list[int | None] = []
    for _ in range(4):
        trial = study.ask()
        pruned.append(None)
        for epoch in range(1, epochs + 1):
            trial.report(0.1, epoch)
            if trial.should_prune():
                pruned[-1] = epoch
                break
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return pruned


def test_pruners_never_act_before_the_first_learning_rate_drop():
    paper = spec_of(PAPER)
    assert sweep_storage.warmup_epochs(paper) == (20, 80)
    assert isinstance(sweep_storage.build_pruner(paper, None), optuna.pruners.NopPruner)
    assert _pruned_at(sweep_storage.build_pruner(paper, "median"), 80) == [20] * 4
    assert _pruned_at(sweep_storage.build_pruner(paper, "none"), 80) == [None] * 4
    hyperband = _pruned_at(sweep_storage.build_pruner(paper, "hyperband"), 80)
    assert any(hyperband) and all(e is None or e >= 20 for e in hyperband), hyperband
    quick = spec_of({**PAPER, "parameters": {**PAPER["parameters"], "preset": {"value": "quick"}}})
    assert sweep_storage.warmup_epochs(quick) == (4, 6)
    assert _pruned_at(sweep_storage.build_pruner(quick, "median"), 6) == [4] * 4
    # The file's early_terminate picks hyperband; a min_iter below the warm-up is raised.
    early = spec_of(PAPER, early_terminate={"type": "hyperband", "min_iter": 3})
    assert isinstance(sweep_storage.build_pruner(early, None), optuna.pruners.HyperbandPruner)
    early_pruned = _pruned_at(sweep_storage.build_pruner(early, None), 80)
    assert any(early_pruned) and all(e is None or e >= 20 for e in early_pruned), early_pruned
    with pytest.raises(ValueError, match="--prune must be one of"):
        sweep_storage.build_pruner(paper, "percentile")
