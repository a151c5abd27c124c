"""``mambakit serve`` flags and start-up failures: one line on stderr, exit code 2."""

import sys

from mambakit.cli import main

sys.path.insert(0, __file__.rsplit("/serve/", 1)[0] + "/cli")
from cli_helpers import fails  # noqa: E402


def test_a_missing_checkpoint_fails_before_listening(capsys, tmp_path):
    fails(capsys, ["serve", "--checkpoint", str(tmp_path / "nope")], "checkpoint", "not found")


def test_bad_flags(capsys, checkpoint):
    fails(capsys, ["serve", "--checkpoint", str(checkpoint), "--slots", "0"], "--slots")
    fails(capsys, ["serve", "--checkpoint", str(checkpoint), "--prefix-cache-mb", "-1"], "--prefix-cache-mb")
    fails(capsys, ["serve", "--checkpoint", str(checkpoint), "--api-key", " "], "--api-key")


def test_a_damaged_checkpoint_fails_after_listening_with_one_line(capsys, tmp_path):
    (tmp_path / "config.json").write_text('{"d_model": 32, "n_layer": 2, "vocab_size": 256}')
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    code = main(["serve", "--checkpoint", str(tmp_path), "--port", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("mambakit serve: error: ") and "model.safetensors" in last


def test_a_port_in_use_is_one_line(capsys, checkpoint):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        fails(capsys, ["serve", "--checkpoint", str(checkpoint), "--port", str(port)], "--port", str(port))
