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
