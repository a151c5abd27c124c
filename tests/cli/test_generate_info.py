"""generate (streamed, seeded, from run or checkpoint directories), info, and the BPE tokenizer workflow."""

import json

import pytest
from cli_helpers import TINY

from mambakit.cli import main
from mambakit.models import MambaLMHeadModel
from mambakit.training import latest_checkpoint


def _generate(capsys, *argv):
    assert main(["generate", *argv]) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_generate_is_seeded_and_streams_after_the_prompt(capsys, trained_run):
    sampling = ["--max-new-tokens", "12", "--seed", "5", "--top-k", "20", "--top-p", "0.9",
                "--repetition-penalty", "1.2"]
    args = ["--checkpoint", str(trained_run), "--prompt", "hark what", *sampling]
    out, err = _generate(capsys, *args)
    assert out.startswith("hark what") and out.endswith("\n")
    assert len(out[len("hark what"):-1].encode("utf-8", errors="surrogateescape")) <= 12 * 3
    assert "12 tokens" in err and "tokens/s" in err
    again, _ = _generate(capsys, *args)
    assert again == out
    checkpoint = str(latest_checkpoint(trained_run))
    from_checkpoint_dir, _ = _generate(capsys, "--checkpoint", checkpoint, "--prompt", "hark what", *sampling)
    assert from_checkpoint_dir == out


def test_info_reports_config_parameters_and_memory(capsys, trained_run):
    assert main(["info", str(trained_run)]) == 0
    out = capsys.readouterr().out
    model = MambaLMHeadModel.from_pretrained(latest_checkpoint(trained_run))
    n_params = sum(p.numel() for p in model.parameters())
    assert f"parameters: {n_params:,}" in out
    assert '"d_model": 16' in out and "recurrent state per sequence" in out
    assert "last validation loss" in out


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
    out, _ = _generate(capsys, "--checkpoint", str(run), "--prompt", "hark", "--max-new-tokens", "5",
                       "--seed", "1")
    assert out.startswith("hark")


def test_pretokenised_bin_trains(capsys, tmp_path, corpus):
    data = tmp_path / "corpus.bin"
    assert main(["tokenize", "--data", corpus, "--out", str(data)]) == 0
    assert json.loads((tmp_path / "corpus.bin.json").read_text())["dtype"] == "uint8"
    run = tmp_path / "bin_run"
    assert main(["train", "--data", str(data), "--out", str(run), *TINY, "--steps", "2"]) == 0
    assert latest_checkpoint(run) is not None


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["generate", "--help"]])
def test_help_exits_zero(capsys, argv):
    assert main(argv) == 0
    assert "usage" in capsys.readouterr().out


def test_overwrite_replaces_an_earlier_run(tmp_path, trained_run, corpus):
    import shutil

    from mambakit.training import read_metrics

    run = tmp_path / "again"
    shutil.copytree(trained_run, run)
    assert main(["train", "--data", corpus, "--out", str(run), *TINY, "--steps", "2", "--overwrite"]) == 0
    assert max(r["step"] for r in read_metrics(run / "metrics.jsonl")) == 2
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000002"]


def test_generate_from_a_hugging_face_directory(capsys, tmp_path, trained_run):
    model = MambaLMHeadModel.from_pretrained(latest_checkpoint(trained_run))
    model.save_pretrained(tmp_path / "hf", format="hf")  # no tokenizer file: 256 tokens means bytes
    args = ["--prompt", "hark", "--max-new-tokens", "6", "--seed", "3"]
    from_hf, _ = _generate(capsys, "--checkpoint", str(tmp_path / "hf"), *args)
    from_run, _ = _generate(capsys, "--checkpoint", str(trained_run), *args)
    assert from_hf == from_run


def test_streamed_text_waits_for_characters_split_across_tokens():
    import io

    import torch

    from mambakit.cli import _TextStream
    from mambakit.data import BPETokenizer, ByteTokenizer

    bpe = BPETokenizer.train(["hello world " * 50], 300)  # "€" is not in it: three byte tokens
    for tokenizer in (bpe, ByteTokenizer()):
        out = io.StringIO()
        stream = _TextStream(tokenizer, out)
        pieces = []
        for token in tokenizer.encode("a€b€"):
            stream(torch.tensor([token]))
            pieces.append(out.getvalue())
        stream.finish()
        assert out.getvalue() == "a€b€\n"
        assert all("\ufffd" not in piece for piece in pieces)  # never printed half a character
        assert pieces[0] == "a"  # and printed each complete character as soon as it was complete


def test_plot_writes_the_figures(capsys, tmp_path):
    assert main(["plot", "--out", str(tmp_path / "figs"), "--quick"]) == 0
    printed = capsys.readouterr().out.split()
    names = sorted(p.rsplit("/", 1)[-1] for p in printed)
    assert "ssd_duality.png" in names and "modes_agree.png" in names
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == names
