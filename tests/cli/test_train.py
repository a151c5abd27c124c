"""mambakit train: bad data and nonsense flags refused in one line, an existing run and a mismatched
resume left alone, --overwrite."""

import hashlib
import shutil

from cli_helpers import TINY, fails

from mambakit.cli import main


def _digest(run):
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file() and p.name != "loss_curve.png"}


def test_bad_data(capsys, tmp_path, corpus):
    out = str(tmp_path / "run")
    missing = str(tmp_path / "missing.txt")
    fails(capsys, ["train", "--data", missing, "--out", out, *TINY], "data", "not found")
    (tmp_path / "empty.txt").write_text("")
    fails(capsys, ["train", "--data", str(tmp_path / "empty.txt"), "--out", out, *TINY], "data", "empty")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    fails(capsys, ["train", "--data", str(tmp_path / "bin.txt"), "--out", out, *TINY], "UTF-8")
    (tmp_path / "short.txt").write_text("too short for one context" * 2)
    fails(capsys, ["train", "--data", str(tmp_path / "short.txt"), "--out", out, *TINY, "--seq-len", "64"],
           "fewer than one context", "seq_len + 1 = 65")
    (tmp_path / "odd.bin").write_bytes(b"\x00\x01\x02")
    odd = str(tmp_path / "odd.bin")
    fails(capsys, ["train", "--data", odd, "--out", out, *TINY, "--token-dtype", "uint16"], "divisible by 2")
    assert not (tmp_path / "run").exists()  # nothing was created for a run that could not start


def test_nonsense_flag_values(capsys, tmp_path, corpus):
    base = ["train", "--data", corpus, "--out", str(tmp_path / "run"), *TINY]
    fails(capsys, [*base, "--steps", "-3"], "--steps", "positive integer", "'-3'")
    fails(capsys, [*base, "--steps", "many"], "--steps", "'many'")
    fails(capsys, [*base, "--lr", "nan"], "--lr", "finite")
    fails(capsys, [*base, "--lr", "0"], "lr", "positive")
    fails(capsys, [*base, "--batch-size", "6", "--grad-accum", "4"], "batch_size", "multiple of", "got 6")
    fails(capsys, [*base, "--time-budget", "-1"], "time_budget")
    fails(capsys, ["generate", "--checkpoint", "x", "--prompt", "a", "--max-new-tokens", "0"],
           "--max-new-tokens")


def test_existing_run_and_mismatched_resume_leave_the_checkpoint_alone(capsys, trained_run, corpus):
    before = _digest(trained_run)
    fails(capsys, ["train", "--data", corpus, "--out", str(trained_run), *TINY, "--steps", "3"],
           "already holds a run", "--resume")
    fails(capsys, ["train", "--resume", str(trained_run), "--d-model", "32"], "d_model", "32", "16")
    fails(capsys, ["train", "--resume", str(trained_run), "--lr", "0.5"], "lr = 0.5", "0.003")
    fails(capsys, ["train", "--resume", str(trained_run.parent / "no_such_run")], "run.json", "not found")
    assert _digest(trained_run) == before


def test_resume_refuses_data_that_changed(capsys, tmp_path, corpus):
    data = tmp_path / "data.txt"
    data.write_text(open(corpus).read())
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), *TINY, "--steps", "1"]) == 0
    capsys.readouterr()
    with open(data, "a") as f:
        f.write("a new line that shifts every window\n" * 20)
    fails(capsys, ["train", "--resume", str(run)], "train_tokens", "same --data")


def test_overwrite_replaces_an_earlier_run(tmp_path, trained_run, corpus):

    from mambakit.training import read_metrics

    run = tmp_path / "again"
    shutil.copytree(trained_run, run)
    assert main(["train", "--data", corpus, "--out", str(run), *TINY, "--steps", "2", "--overwrite"]) == 0
    assert max(r["step"] for r in read_metrics(run / "metrics.jsonl")) == 2
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000002"]
