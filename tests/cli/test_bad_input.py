"""Bad input through the command line: one line on stderr, exit code 2, no traceback, and an existing good
checkpoint is never overwritten."""

import hashlib
import shutil
import subprocess
import sys

from cli_helpers import TINY

from mambakit.cli import main


def _fails(capsys, argv, *fragments):
    """Run the command line; it must return 2 with one stderr line that names each fragment."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    print(lines[0])  # shown with -s: the messages a user sees


def _digest(run):
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file() and p.name != "loss_curve.png"}


def test_bad_data(capsys, tmp_path, corpus):
    out = str(tmp_path / "run")
    missing = str(tmp_path / "missing.txt")
    _fails(capsys, ["train", "--data", missing, "--out", out, *TINY], "data", "not found")
    (tmp_path / "empty.txt").write_text("")
    _fails(capsys, ["train", "--data", str(tmp_path / "empty.txt"), "--out", out, *TINY], "data", "empty")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    _fails(capsys, ["train", "--data", str(tmp_path / "bin.txt"), "--out", out, *TINY], "UTF-8")
    (tmp_path / "short.txt").write_text("too short for one context" * 2)
    _fails(capsys, ["train", "--data", str(tmp_path / "short.txt"), "--out", out, *TINY, "--seq-len", "64"],
           "fewer than one context", "seq_len + 1 = 65")
    (tmp_path / "odd.bin").write_bytes(b"\x00\x01\x02")
    odd = str(tmp_path / "odd.bin")
    _fails(capsys, ["train", "--data", odd, "--out", out, *TINY, "--token-dtype", "uint16"], "divisible by 2")
    assert not (tmp_path / "run").exists()  # nothing was created for a run that could not start


def test_nonsense_flag_values(capsys, tmp_path, corpus):
    base = ["train", "--data", corpus, "--out", str(tmp_path / "run"), *TINY]
    _fails(capsys, [*base, "--steps", "-3"], "--steps", "positive integer", "'-3'")
    _fails(capsys, [*base, "--steps", "many"], "--steps", "'many'")
    _fails(capsys, [*base, "--lr", "nan"], "--lr", "finite")
    _fails(capsys, [*base, "--lr", "0"], "lr", "positive")
    _fails(capsys, [*base, "--batch-size", "6", "--grad-accum", "4"], "batch_size", "multiple of", "got 6")
    _fails(capsys, [*base, "--time-budget", "-1"], "time_budget")
    _fails(capsys, ["generate", "--checkpoint", "x", "--prompt", "a", "--max-new-tokens", "0"],
           "--max-new-tokens")


def test_generate_flags_and_broken_checkpoints(capsys, tmp_path, trained_run):
    gen = ["generate", "--checkpoint", str(trained_run), "--prompt", "hark", "--max-new-tokens", "4"]
    _fails(capsys, [*gen, "--top-p", "0"], "top_p", "(0, 1]", "got 0.0")
    _fails(capsys, [*gen, "--top-p", "1.5"], "top_p", "got 1.5")
    _fails(capsys, [*gen, "--temperature", "0"], "temperature")
    _fails(capsys, [*gen, "--repetition-penalty", "0.5"], "repetition_penalty")
    _fails(capsys, ["generate", "--checkpoint", str(tmp_path / "nothing"), "--prompt", "a"], "not found")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"model_type": "gpt2", "n_embd": 8}')
    (foreign / "model.safetensors").write_bytes(b"")
    _fails(capsys, ["generate", "--checkpoint", str(foreign), "--prompt", "a"], "foreign")
    _fails(capsys, ["info", str(foreign)], "foreign")
    truncated = tmp_path / "truncated"
    shutil.copytree(trained_run, truncated)
    latest = (truncated / "latest").read_text().strip()
    weights = truncated / latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    _fails(capsys, ["generate", "--checkpoint", str(truncated), "--prompt", "a"], "model.safetensors")
    _fails(capsys, ["train", "--resume", str(truncated)], "model.safetensors")


def test_existing_run_and_mismatched_resume_leave_the_checkpoint_alone(capsys, trained_run, corpus):
    before = _digest(trained_run)
    _fails(capsys, ["train", "--data", corpus, "--out", str(trained_run), *TINY, "--steps", "3"],
           "already holds a run", "--resume")
    _fails(capsys, ["train", "--resume", str(trained_run), "--d-model", "32"], "d_model", "32", "16")
    _fails(capsys, ["train", "--resume", str(trained_run), "--lr", "0.5"], "lr = 0.5", "0.003")
    _fails(capsys, ["train", "--resume", str(trained_run.parent / "no_such_run")], "run.json", "not found")
    assert _digest(trained_run) == before


def test_the_installed_command_exits_2_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mambakit", "train", "--data", str(tmp_path / "missing"),
                           "--out", str(tmp_path / "run"), "--steps", "1"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("mambakit train: error: data:")


def test_resume_refuses_data_that_changed(capsys, tmp_path, corpus):
    data = tmp_path / "data.txt"
    data.write_text(open(corpus).read())
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), *TINY, "--steps", "1"]) == 0
    capsys.readouterr()
    with open(data, "a") as f:
        f.write("a new line that shifts every window\n" * 20)
    _fails(capsys, ["train", "--resume", str(run)], "train_tokens", "same --data")
