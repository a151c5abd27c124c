"""Text as it is released to a stream: whole characters, no part of a stop sequence, and the chat template."""

from mambakit.data import ByteTokenizer
from mambakit.serve.chat import END_OF_TURN, ChatTemplate, Message, load_chat_template
from mambakit.serve.text import TextAssembler

TOK = ByteTokenizer()


def feed(assembler, text):
    out, stopped = [], False
    for token in TOK.encode(text):
        piece, stopped = assembler.push(token)
        out.append(piece)
        if stopped:
            break
    return out, stopped


def test_a_character_cut_between_tokens_waits_for_its_end():
    pieces, _ = feed(TextAssembler(TOK), "aé€")
    assert pieces == ["a", "", "é", "", "", "€"]


def test_a_stop_sequence_never_reaches_the_stream_not_even_half_of_it():
    assembler = TextAssembler(TOK, ["STOP", "XY"])
    pieces, stopped = feed(assembler, "abSTxSTOPyz")
    assert stopped and "".join(pieces) == "abSTx"
    assert all("ST" not in p or p == "STx" for p in pieces)
    assert assembler.push(ord("q")) == ("", True) and assembler.flush() == ""


def test_held_back_text_comes_out_at_the_end():
    assembler = TextAssembler(TOK, ["STOP"])
    pieces, stopped = feed(assembler, "okST")
    assert not stopped and "".join(pieces) == "ok" and assembler.flush() == "ST"


def test_ids_beyond_the_tokenizer_have_no_text():
    assembler = TextAssembler(TOK)
    assert assembler.push(300) == ("", False) and assembler.push(ord("a")) == ("a", False)


def test_builtin_template_marks_where_each_message_ends(tmp_path):
    template = load_chat_template(tmp_path)
    assert template.stops == (END_OF_TURN,)
    messages = [Message("system", "Be brief."), Message("user", "Hi")]
    ids, ends = template.prompt(TOK, messages)
    text = TOK.decode(ids)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                    "<|im_start|>assistant\n")
    assert TOK.decode(ids[:ends[0]]) == "<|im_start|>system\nBe brief.<|im_end|>\n"


def test_a_template_the_tokenizer_brings_is_used(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(
        '{"eos_token": "</s>", "chat_template": "{% for m in messages %}[{{ m.role }}] {{ m.content }}\\n'
        '{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}"}')
    template = load_chat_template(tmp_path)
    assert isinstance(template, ChatTemplate) and template.stops == ()
    assert template.render([Message("user", "Hi")]) == "[user] Hi\n[assistant] "
