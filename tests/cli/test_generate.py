"""mambakit generate: seeded and streamed, from run, checkpoint and Hugging Face directories; the
sampling flags judged as the library judges them; broken checkpoints refused in one line."""

import io
import shutil

import pytest
import torch
from cli_helpers import fails, run_generate

from mambakit.data import BPETokenizer, ByteTokenizer
from mambakit.errors import ConfigError
from mambakit.models import MambaLMHeadModel, SamplingOptions
from mambakit.training import latest_checkpoint


def test_generate_is_seeded_and_streams_after_the_prompt(capsys, trained_run):
    sampling = ["--max-new-tokens", "12", "--seed", "5", "--top-k", "20", "--top-p", "0.9",
                "--repetition-penalty", "1.2"]
    args = ["--checkpoint", str(trained_run), "--prompt", "hark what", *sampling]
    out, err = run_generate(capsys, *args)
    assert out.startswith("hark what") and out.endswith("\n")
    assert len(out[len("hark what"):-1].encode("utf-8", errors="surrogateescape")) <= 12 * 3
    assert "12 tokens" in err and "tokens/s" in err
    again, _ = run_generate(capsys, *args)
    assert again == out
    checkpoint = str(latest_checkpoint(trained_run))
    from_checkpoint_dir, _ = run_generate(capsys, "--checkpoint", checkpoint, "--prompt", "hark what",
                                          *sampling)
    assert from_checkpoint_dir == out


def test_generate_from_a_hugging_face_directory(capsys, tmp_path, trained_run):
    model = MambaLMHeadModel.from_pretrained(latest_checkpoint(trained_run))
    model.save_pretrained(tmp_path / "hf", format="hf")  # no tokenizer file: 256 tokens means bytes
    args = ["--prompt", "hark", "--max-new-tokens", "6", "--seed", "3"]
    from_hf, _ = run_generate(capsys, "--checkpoint", str(tmp_path / "hf"), *args)
    from_run, _ = run_generate(capsys, "--checkpoint", str(trained_run), *args)
    assert from_hf == from_run


def test_streamed_text_waits_for_characters_split_across_tokens():


    from mambakit.cli.generate import TextStream

    bpe = BPETokenizer.train(["hello world " * 50], 300)  # "€" is not in it: three byte tokens
    for tokenizer in (bpe, ByteTokenizer()):
        out = io.StringIO()
        stream = TextStream(tokenizer, out)
        pieces = []
        for token in tokenizer.encode("a€b€"):
            stream(torch.tensor([token]))
            pieces.append(out.getvalue())
        stream.finish()
        assert out.getvalue() == "a€b€\n"
        assert all("\ufffd" not in piece for piece in pieces)  # never printed half a character
        assert pieces[0] == "a"  # and printed each complete character as soon as it was complete


def test_generate_flags_and_broken_checkpoints(capsys, tmp_path, trained_run):
    gen = ["generate", "--checkpoint", str(trained_run), "--prompt", "hark", "--max-new-tokens", "4"]
    fails(capsys, [*gen, "--top-p", "0"], "--top-p", "(0, 1]", "got 0.0")
    fails(capsys, [*gen, "--top-p", "1.5"], "--top-p", "got 1.5")
    fails(capsys, [*gen, "--temperature", "-0.5"], "--temperature")
    fails(capsys, [*gen, "--repetition-penalty", "0"], "--repetition-penalty")
    fails(capsys, ["generate", "--checkpoint", str(tmp_path / "nothing"), "--prompt", "a"], "not found")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"model_type": "gpt2", "n_embd": 8}')
    (foreign / "model.safetensors").write_bytes(b"")
    fails(capsys, ["generate", "--checkpoint", str(foreign), "--prompt", "a"], "foreign")
    fails(capsys, ["info", str(foreign)], "foreign")
    truncated = tmp_path / "truncated"
    shutil.copytree(trained_run, truncated)
    latest = (truncated / "latest").read_text().strip()
    weights = truncated / latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    fails(capsys, ["generate", "--checkpoint", str(truncated), "--prompt", "a"], "model.safetensors")
    fails(capsys, ["train", "--resume", str(truncated)], "model.safetensors")


@pytest.mark.parametrize(
    "field,value",
    [
        ("temperature", 0.0), ("temperature", 0.7), ("temperature", -1.0),
        ("top_k", 1), ("top_k", 0),
        ("top_p", 0.0), ("top_p", 0.5), ("top_p", 1.0), ("top_p", 1.5),
        ("repetition_penalty", 0.5), ("repetition_penalty", 1.0), ("repetition_penalty", 2.0),
        ("repetition_penalty", 0.0), ("repetition_penalty", -1.0),
    ],
)
def test_sampling_flags_agree_with_the_library(capsys, trained_run, field, value):
    """The command accepts what generate() accepts (temperature 0 = greedy, a penalty below 1) and refuses
    what it refuses, with exit code 2 and one line naming the flag."""
    try:
        SamplingOptions(**{field: value})
        library_accepts = True
    except ConfigError:
        library_accepts = False
    flag = "--" + field.replace("_", "-")
    argv = ["--checkpoint", str(trained_run), "--prompt", "hark", "--max-new-tokens", "3", "--seed", "0",
            flag, str(value)]
    if library_accepts:
        out, _ = run_generate(capsys, *argv)
        assert out.startswith("hark")
    else:
        fails(capsys, ["generate", *argv], flag)



@pytest.mark.parametrize("dtype", ["bf16", "int8"])
def test_generate_with_low_precision_weights(capsys, trained_run, dtype):
    args = ["--checkpoint", str(trained_run), "--prompt", "hark", "--max-new-tokens", "16",
            "--temperature", "0"]
    fp32, _ = run_generate(capsys, *args)
    low, err = run_generate(capsys, *args, "--dtype", dtype)
    assert low.startswith("hark") and "16 tokens" in err
    assert low[:8] == fp32[:8]   # the first greedy tokens of a trained model survive the rounding
