"""The embedded Shakespeare corpus: markdown to text, and the fixed split by play."""

from mambakit.data import VALIDATION_PLAYS, markdown_to_text, shakespeare_plays, shakespeare_split

# Markdown hard line breaks are two trailing spaces: spelled out so editors keep them.
BREAK = "  "
SNIPPET = "\n".join([
    "# Romeo and Juliet",
    "",
    "## ACT I",
    "",
    "### SCENE I. Verona. A public place.",
    "",
    "_Enter SAMPSON and GREGORY, of the house of Capulet, armed with swords and",
    "bucklers_",
    "",
    "**SAMPSON**" + BREAK,
    "Gregory, o' my word, we'll not carry coals." + BREAK,
    "\\--or 'Fair-ladies--I would wish" + BREAK,
    "",
    "",
    "**GREGORY**" + BREAK,
    "No, for then we should be colliers.",
    "",
])


def test_markdown_to_text_speakers_headings_italics_and_escapes():
    text = markdown_to_text(SNIPPET)
    lines = text.splitlines()
    assert lines[0] == "Romeo and Juliet"
    assert "SCENE I. Verona. A public place." in lines
    assert "Enter SAMPSON and GREGORY, of the house of Capulet, armed with swords and" in lines
    assert "bucklers" in lines
    i = lines.index("SAMPSON:")
    assert lines[i + 1] == "Gregory, o' my word, we'll not carry coals."  # hard-break spaces gone
    assert lines[i + 2] == "--or 'Fair-ladies--I would wish"  # markdown escape removed
    assert lines[i + 3] == "" and lines[i + 4] == "GREGORY:"  # blank runs collapse to one
    assert text.endswith("colliers.\n")
    for marker in ("**", "#", "\\", "_"):
        assert marker not in text


def test_split_is_by_play_deterministic_and_clean():
    plays = shakespeare_plays()
    assert len(plays) >= 30
    train, val = shakespeare_split()
    assert (train, val) == shakespeare_split()
    assert 0.03 < len(val) / (len(train) + len(val)) < 0.15
    for name in VALIDATION_PLAYS:
        first_speech = plays[name][2000:2100]
        assert first_speech in val and first_speech not in train
    assert "ROMEO:" in train
    for marker in ("**", "\\"):
        assert marker not in train and marker not in val
