"""mambakit train-tokenizer and tokenize: a BPE tokenizer saved with the checkpoint, a .bin corpus that
trains."""

import json

from cli_helpers import TINY, run_generate

from mambakit.cli import main
from mambakit.models import MambaLMHeadModel
from mambakit.training import latest_checkpoint


def test_bpe_tokenizer_trained_by_command_is_saved_with_the_checkpoint(capsys, tmp_path, corpus):
    tok = tmp_path / "tokenizer.json"
    assert main(["train-tokenizer", "--data", corpus, "--vocab-size", "300", "--out", str(tok)]) == 0
    vocab = json.loads(tok.read_text())["model"]["vocab"]
    assert 258 <= len(vocab) <= 300
    run = tmp_path / "bpe_run"
    assert main(["train", "--data", corpus, "--tokenizer", str(tok), "--out", str(run), *TINY,
                 "--steps", "2"]) == 0
    checkpoint = latest_checkpoint(run)
    assert (checkpoint / "tokenizer.json").read_text() == tok.read_text()
    assert MambaLMHeadModel.from_pretrained(checkpoint).config.vocab_size == len(vocab)
    tok.unlink()  # generate needs nothing but the run directory
    out, _ = run_generate(capsys, "--checkpoint", str(run), "--prompt", "hark", "--max-new-tokens", "5",
                       "--seed", "1")
    assert out.startswith("hark")


def test_pretokenised_bin_trains(capsys, tmp_path, corpus):
    data = tmp_path / "corpus.bin"
    assert main(["tokenize", "--data", corpus, "--out", str(data)]) == 0
    assert json.loads((tmp_path / "corpus.bin.json").read_text())["dtype"] == "uint8"
    run = tmp_path / "bin_run"
    assert main(["train", "--data", str(data), "--out", str(run), *TINY, "--steps", "2"]) == 0
    assert latest_checkpoint(run) is not None
