"""The experiment runner end to end at toy size: files written, table rows, settings overrides, bad names."""

import json

import pytest
from experiments.runner import run_experiment
from experiments.settings import PRESETS, settings_for

from mambakit.errors import ConfigError


def test_selective_copying_writes_table_json_and_plot(tmp_path):
    overrides = {
        "steps": 2,
        "batch_size": 2,
        "seq_len": 12,
        "num_tokens": 2,
        "eval_samples": 4,
        "d_model": 16,
    }
    path = run_experiment("selective_copying", tmp_path, preset="smoke", overrides=overrides, progress=False)
    record = json.loads((tmp_path / "results.json").read_text())
    assert [r["mixer"] for r in record["rows"]] == ["mamba", "s4d", "attention"]
    assert all(r["steps"] == 2 and 0.0 <= r["accuracy"] <= 1.0 for r in record["rows"])
    text = path.read_text()
    assert "| Mamba (S6) |" in text and "L = 12" in text
    assert (tmp_path / "selective_copying.png").read_bytes()[:4] == b"\x89PNG"


def test_induction_heads_marks_lengths_not_evaluated(tmp_path):
    overrides = {
        "steps": 2,
        "batch_size": 2,
        "train_len": 8,
        "eval_lengths": [8, 16, 32],
        "eval_samples": 3,
        "attention_max_len": 16,
        "s4d_max_len": 8,
        "d_model": 16,
        "mixers": ["mamba", "attention", "s4d"],
        "skip_after_chance": 0,  # barely trained models are at chance: evaluate every length anyway
    }
    run_experiment("induction_heads", tmp_path, preset="smoke", overrides=overrides, progress=False)
    rows = {
        r["mixer"]: r["accuracy_by_length"]
        for r in json.loads((tmp_path / "results.json").read_text())["rows"]
    }
    assert all(v is not None for v in rows["mamba"].values())
    assert rows["attention"]["32"] is None and rows["attention"]["16"] is not None
    assert rows["s4d"]["16"] is None and rows["s4d"]["8"] is not None
    assert "—" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "induction_heads.png").stat().st_size > 0


@pytest.mark.parametrize(
    "args, name",
    [
        (("copying", "cpu", None), "experiment"),
        (("induction_heads", "huge", None), "preset"),
        (("induction_heads", "cpu", {"nonsense": 1}), "overrides"),
        (("induction_heads", "cpu", {"mixers": ["mamba", "rnn"]}), "mixers"),
    ],
)
def test_bad_names_are_config_errors(args, name):
    with pytest.raises(ConfigError, match=name):
        settings_for(*args)


def test_single_values_become_tuples():
    settings = settings_for("induction_heads", "smoke", {"mixers": "mamba", "eval_lengths": 64})
    assert settings.mixers == ("mamba",) and settings.eval_lengths == (64,)


def test_every_preset_builds_valid_settings():
    for name, presets in PRESETS.items():
        for preset in presets:
            assert settings_for(name, preset).seed == 0


def test_induction_heads_curriculum_trains_each_length_first(tmp_path):
    overrides = {
        "steps": 2,
        "batch_size": 2,
        "train_len": 16,
        "curriculum_lengths": [4, 8],
        "curriculum_steps": 3,
        "curriculum_accuracy": 1.0,
        "eval_lengths": [16],
        "eval_samples": 3,
        "d_model": 16,
        "mixers": ["mamba"],
    }
    run_experiment("induction_heads", tmp_path, preset="smoke", overrides=overrides, progress=False)
    (row,) = json.loads((tmp_path / "results.json").read_text())["rows"]
    # Each curriculum phase ran at most its step cap; the loss curve holds every phase's steps.
    assert len(row["curriculum_steps"]) == 2 and all(1 <= n <= 3 for n in row["curriculum_steps"])
    assert len(row["losses"]) == sum(row["curriculum_steps"]) + row["steps"]
    text = (tmp_path / "results.md").read_text()
    assert "Length curriculum first: L = 4, 8" in text
    assert f"| {sum(row['curriculum_steps'])} + {row['steps']} |" in text


def test_curriculum_phases_use_their_own_batch_and_lr(tmp_path, monkeypatch):
    import experiments.runner as experiment

    used = []
    real_train = experiment.train

    def recording_train(model, task, settings, progress=None):
        used.append((task.seq_len, settings.batch_size, settings.lr, settings.lr_schedule))
        return real_train(model, task, settings, progress)

    monkeypatch.setattr(experiment, "train", recording_train)
    overrides = {
        "steps": 1, "batch_size": 2, "lr": 5e-3, "lr_schedule": "constant", "train_len": 16,
        "curriculum_lengths": [8], "curriculum_steps": 1, "curriculum_batch_size": 3, "curriculum_lr": 1e-3,
        "eval_lengths": [16], "eval_samples": 2, "d_model": 16, "mixers": ["mamba"],
    }
    run_experiment("induction_heads", tmp_path, preset="smoke", overrides=overrides, progress=False)
    assert used == [(8, 3, 1e-3, "cosine"), (16, 2, 5e-3, "constant")]
    assert "(batch 3, lr 0.001 decaying)" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize(
    "field, value",
    [
        ("curriculum_batch_size", 0),
        ("curriculum_lr", -1.0),
        ("curriculum_lr", float("nan")),
        ("lr_schedule", "x"),
    ],
)
def test_bad_curriculum_optimiser_settings_name_the_field(tmp_path, field, value):
    overrides = {field: value, "mixers": ["mamba"], "steps": 1, "curriculum_steps": 1}
    with pytest.raises(ConfigError, match=field):
        run_experiment("induction_heads", tmp_path, preset="cpu", overrides=overrides, progress=False)


@pytest.mark.parametrize(
    "curriculum, field",
    [
        ([8, 300], "curriculum_lengths"),   # not shorter than train_len
        ([64, 32], "curriculum_lengths"),   # not increasing
        ([2], "curriculum_lengths"),        # too short for trigger, target, trigger
    ],
)
def test_bad_curriculum_is_a_config_error(tmp_path, curriculum, field):
    overrides = {"curriculum_lengths": curriculum, "mixers": ["mamba"], "steps": 1}
    with pytest.raises(ConfigError, match=field):
        run_experiment("induction_heads", tmp_path, preset="cpu", overrides=overrides, progress=False)


def test_lengths_after_a_run_at_chance_are_skipped(tmp_path, monkeypatch):
    import experiments.runner as experiment

    calls = []

    def at_chance(model, batch, chunk_len):
        calls.append(batch.inputs.shape[1])
        return 0.0

    monkeypatch.setattr(experiment, "last_position_accuracy", at_chance)
    overrides = {"steps": 1, "batch_size": 2, "train_len": 8, "eval_lengths": [8, 16, 32, 64],
                 "eval_samples": 2, "d_model": 16, "mixers": ["mamba"], "skip_after_chance": 2}
    run_experiment("induction_heads", tmp_path, preset="smoke", overrides=overrides, progress=False)
    (row,) = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert calls == [8, 16] and row["skipped_at_chance"] == [32, 64]
    assert "| 0.0 | 0.0 | · | · |" in (tmp_path / "results.md").read_text()


def test_negative_skip_after_chance_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="skip_after_chance"):
        run_experiment("induction_heads", tmp_path, preset="smoke", overrides={"skip_after_chance": -1},
                       progress=False)


def test_mqar_writes_accuracy_per_pair_count(tmp_path):
    overrides = {"steps": 2, "batch_size": 4, "seq_len": 24, "vocab_size": 24, "num_pairs": [2, 4],
                 "eval_samples": 3, "d_model": 16, "mixers": ["attention", "mamba3-mimo", "hybrid"]}
    path = run_experiment("mqar", tmp_path, preset="smoke", overrides=overrides, progress=False)
    record = json.loads((tmp_path / "results.json").read_text())
    assert [r["mixer"] for r in record["rows"]] == ["attention", "mamba3-mimo", "hybrid"]
    assert all(set(r["accuracy_by_pairs"]) == {"2", "4"} and r["steps"] == 2 for r in record["rows"])
    text = path.read_text()
    assert "| Hybrid (Mamba-2 + 1 attention) |" in text and "| 4 pairs |" in text
    assert (tmp_path / "mqar.png").read_bytes()[:4] == b"\x89PNG"


def test_state_tracking_writes_accuracy_per_length(tmp_path):
    overrides = {"steps": 2, "batch_size": 4, "train_len": 8, "eval_lengths": [8, 20], "eval_samples": 3,
                 "d_model": 16, "modulus": 5, "mixers": ["mamba2", "mamba3"]}
    path = run_experiment("state_tracking", tmp_path, preset="smoke", overrides=overrides, progress=False)
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["mixer"] for r in rows] == ["mamba2", "mamba3"]
    assert all(set(r["accuracy_by_length"]) == {"8", "20"} for r in rows)
    assert all(0 <= a <= 1 for r in rows for a in r["all_positions_by_length"].values())
    text = path.read_text()
    assert "sums in Z_5" in text and "| Mamba-3 SISO |" in text and "chance 20%" in text


def test_induction_heads_evaluates_new_models_by_their_kind(tmp_path):
    overrides = {"steps": 1, "batch_size": 2, "train_len": 8, "eval_lengths": [8, 16], "eval_samples": 2,
                 "attention_max_len": 8, "d_model": 16, "mixers": ["mamba3", "hybrid"],
                 "skip_after_chance": 0}
    run_experiment("induction_heads", tmp_path, preset="smoke", overrides=overrides, progress=False)
    rows = {r["mixer"]: r["accuracy_by_length"]
            for r in json.loads((tmp_path / "results.json").read_text())["rows"]}
    assert rows["mamba3"]["16"] is not None  # recurrent: chunked, any length
    assert rows["hybrid"]["16"] is None and rows["hybrid"]["8"] is not None  # has attention: capped


def test_bad_num_pairs_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="num_pairs"):
        run_experiment("mqar", tmp_path, preset="smoke", overrides={"num_pairs": [0]}, progress=False)
