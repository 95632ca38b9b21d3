"""The paper's mixed-document format: `text <|image|>NAME<|/image|> text ...` (method.md
section 6). Parsing is strict, because a mistyped tag would otherwise be trained on as
ordinary text; every error names the source and the character offset.
"""

import re
from pathlib import Path

from .errors import BadInput

OPEN, CLOSE = "<|image|>", "<|/image|>"
_TAG = re.compile(re.escape(OPEN) + "|" + re.escape(CLOSE))


def parse_document(text: str, source: str) -> list[dict]:
    """Split `text` into text and image elements in document order.

    Text pieces are stripped at both ends and dropped when empty; image names are
    stripped. Raises BadInput for an unclosed, stray or nested tag or an empty name.
    """
    elements: list[dict] = []
    pos, open_at = 0, None  # open_at: offset of the pending <|image|>, if any
    for m in _TAG.finditer(text):
        if m.group() == OPEN:
            if open_at is not None:
                raise BadInput(
                    f"{source}: nested {OPEN} at character {m.start()} "
                    f"(the one at {open_at} is not closed)",
                    "nested_tag",
                )
            piece = text[pos : m.start()].strip()
            if piece:
                elements.append({"type": "text", "text": piece})
            open_at = m.start()
        else:
            if open_at is None:
                raise BadInput(f"{source}: stray {CLOSE} at character {m.start()}", "stray_tag")
            name = text[open_at + len(OPEN) : m.start()].strip()
            if not name:
                raise BadInput(
                    f"{source}: empty image name at character {open_at}", "empty_image_name"
                )
            elements.append({"type": "image", "name": name})
            open_at = None
        pos = m.end()
    if open_at is not None:
        raise BadInput(f"{source}: unclosed {OPEN} at character {open_at}", "unclosed_tag")
    piece = text[pos:].strip()
    if piece:
        elements.append({"type": "text", "text": piece})
    return elements


def read_document(path: str | Path) -> str:
    """Read a UTF-8 document (a leading BOM is dropped); BadInput for anything else."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise BadInput(f"{path}: cannot read: {e}", "unreadable_document") from e
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BadInput(f"{path}: not UTF-8 at byte {e.start}", "non_utf8") from e


def resolve_image(name: str, images_dir: str | Path) -> Path:
    """An image reference is an absolute path or a path relative to `images_dir`."""
    p = Path(name)
    return p if p.is_absolute() else Path(images_dir) / p


# ---- the authors' text handling (`--text authors`) ----------------------------------------
# HaunLeung/upw src/model/dataset.py, `UPWDataset.read_text_data`: `parse_start_end` trims a
# document, `parse_chunk` splits it at the tags. Their text pieces keep every character,
# the tags included, and are tokenized whole; here a tag next to an image becomes the image
# element's own <|image|> / <|/image|>, which tokenizes to the same ids.
TEXT_MODES = ("strip", "authors")
_STARTS = ".?!, "  # besides upper-case letters, where the authors' document starts and ends


def authors_trim(text: str) -> str | None:
    """`parse_start_end`: from the first upper-case letter or one of `.?!, ` to the last of
    `.?!, ` (inclusive); None when either is missing. A document that starts with its image
    tag loses the tag (and the name up to such a character): it is then text."""
    start = next((i for i, ch in enumerate(text) if ch.isupper() or ch in _STARTS), None)
    if start is None:
        return None
    text = text[start:]
    end = next((i for i in range(len(text) - 1, -1, -1) if text[i] in _STARTS), None)
    return None if end is None else text[: end + 1]


def parse_document_authors(text: str, source: str) -> list[dict]:
    """`text` as the authors' parser reads it (see above): nothing stripped, whitespace-only
    pieces kept, a closing tag before the first image (and the text before it) handled as
    they do, an unclosed `<|image|>` kept as text with the rest of the document dropped.
    Empty pieces are left out (they tokenize to nothing). BadInput when trimming leaves nothing."""
    trimmed = authors_trim(text)
    if trimmed is None:
        raise BadInput(f"{source}: no upper-case letter or '.?!, ' to start and end at "
                       "(the authors' parser skips it)", "no_content")  # fmt: skip
    text, pos, first, elements = trimmed, 0, True, []

    def add_text(piece: str) -> None:
        if piece:
            elements.append({"type": "text", "text": piece})

    while True:
        at = text.find(OPEN, pos)
        if at == -1:
            add_text(text[pos:])
            break
        if first:  # a closing tag before the first image: the text starts at it
            first, close = False, text.find(CLOSE, pos, at)
            pos = close if close != -1 else pos
        start = at + len(OPEN)
        end = text.find(CLOSE, start)
        if end == -1:  # unclosed: the tag stays text, the rest is dropped
            add_text(text[pos:start])
            break
        add_text(text[pos:at])
        elements.append({"type": "image", "name": text[start:end].strip()})
        pos = end + len(CLOSE)
    return elements
