"""Notes (text modalities): the one place that decides whether a manifest cell holds text.

For a text modality the manifest value is the note itself. :func:`read_note` is used by every
text expert (``minilm``, ``tfidf-svd``, the foundation-model text experts, OneLLM's notes):

* a null / NaN cell never reaches an expert (the driver records it as ``missing``);
* ``bytes`` are decoded as UTF-8 (undecodable bytes -> ``SampleError("note is not valid UTF-8")``);
  any other non-string value (a number, a list) -> ``SampleError("note is a <type>, not text")``;
* a note with no visible character is ``SampleError("empty text")``: empty, only whitespace of
  any kind (space, tab, newlines, no-break and ideographic spaces, the line / paragraph
  separators), only zero-width or other format characters (U+200B/C/D, U+2060, the U+FEFF
  byte-order mark, U+00AD soft hyphen, bidi marks), control characters, lone combining marks,
  unassigned / private-use / surrogate code points, or the blank "filler" characters
  (Hangul fillers, U+2800 braille blank, U+FFFC object replacement);
* a note whose only visible characters are U+FFFD replacement characters (bytes that could
  not be decoded upstream) -> ``SampleError("text is only U+FFFD replacement characters
  (undecodable bytes upstream)")``;
* otherwise the note is returned with its outer whitespace stripped and nothing else changed
  (inner characters, zero-width ones included, are the tokenizer's business).
"""

from __future__ import annotations

import unicodedata
from typing import Any

from extractors.base import SampleError

EMPTY_TEXT = "empty text"
ONLY_REPLACEMENT = "text is only U+FFFD replacement characters (undecodable bytes upstream)"

# Unicode general categories that carry no visible text: separators (Z*), control (Cc),
# format (Cf: zero-width space/joiners, BOM, soft hyphen, bidi controls), surrogates (Cs),
# private use (Co), unassigned (Cn), and combining marks (M*), which show nothing without a base.
INVISIBLE_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co", "Cn", "Mn", "Mc", "Me"})
# Letters / symbols that render as blank space.
BLANK_CHARACTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800\ufffc")
REPLACEMENT = "\ufffd"


def is_visible(ch: str) -> bool:
    """A character that shows something (not whitespace, format, control or a blank filler)."""
    return ch not in BLANK_CHARACTERS and unicodedata.category(ch) not in INVISIBLE_CATEGORIES


def note_text(value: Any) -> str:
    """The manifest cell as a ``str`` (see the module docstring); raises SampleError."""
    if value is None or (isinstance(value, float) and value != value):
        raise SampleError(EMPTY_TEXT)
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SampleError("note is not valid UTF-8") from exc
    if not isinstance(value, str):
        raise SampleError(f"note is a {type(value).__name__}, not text")
    return value


def read_note(value: Any) -> str:
    """A note ready for a tokenizer: outer whitespace stripped; refused when it shows nothing."""
    text = note_text(value).strip()
    seen_replacement = False
    for ch in text:
        if ch == REPLACEMENT:
            seen_replacement = True
        elif is_visible(ch):
            return text
    raise SampleError(ONLY_REPLACEMENT if seen_replacement else EMPTY_TEXT)
