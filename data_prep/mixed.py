"""`prep mixed`: documents with inline images -> packed mixed samples (method.md section 6).

Two passes: first every document is read and parsed (text only, cheap), the split is
chosen per document (so no document leaks across splits) and the tokenizer is trained on
the train split's text; then each document's images are loaded, the document is packed
to the sequence budget with that tokenizer, and its samples are written.
"""

from pathlib import Path

from .documents import parse_document, read_document, resolve_image
from .errors import BadInput, UsageError
from .imageio import load_rgb
from .images import list_files
from .pack import pack_document
from .report import Report
from .shards import DatasetWriter, assign_split
from .tokenizer import save_tokenizer, train_tokenizer


def find_documents(docs: Path) -> list[tuple[Path, str]]:
    """(path, source name) of one .txt file or of every *.txt under a folder, sorted."""
    if docs.is_file():
        return [(docs, docs.name)]
    if docs.is_dir():
        return [(p, p.relative_to(docs).as_posix()) for p in list_files(docs, "*.txt")]
    raise UsageError(f"documents {docs} do not exist")


def build_mixed(
    docs: Path,
    images: Path,
    out: Path,
    *,
    image_size: int = 224,
    window_size: int = 16,
    max_seq_len: int = 1024,
    vocab_size: int = 32000,
    val_fraction: float = 0.05,
    shard_size: int = 1000,
    max_side: int = 0,
    seed: int = 0,
) -> dict:
    """Write packed samples of every usable document; return the report."""
    docs, images, out = Path(docs), Path(images), Path(out)
    if image_size % window_size:
        raise UsageError(f"image size {image_size} is not a multiple of window size {window_size}")
    if not images.is_dir():
        raise UsageError(f"image folder {images} does not exist or is not a folder")
    found = find_documents(docs)
    if not found:
        raise UsageError(f"no *.txt documents found under {docs}")
    args = {
        "command": "mixed", "docs": str(docs), "images": str(images), "out": str(out),
        "image_size": image_size, "window_size": window_size, "max_seq_len": max_seq_len,
        "vocab_size": vocab_size, "val_fraction": val_fraction, "shard_size": shard_size,
        "max_side": max_side, "seed": seed,
    }  # fmt: skip
    report = Report()
    parsed = []  # (source, split, elements)
    for path, source in found:
        report.inputs_seen += 1
        try:
            elements = parse_document(read_document(path), source)
        except BadInput as e:
            report.skip(source, e)
            continue
        parsed.append((source, assign_split(source, seed, val_fraction), elements))

    with DatasetWriter(out, "mixed", shard_size, args) as writer:
        train_text = (
            el["text"]
            for _, split, elements in parsed
            if split == "train"
            for el in elements
            if el["type"] == "text"
        )
        tokenizer = train_tokenizer(train_text, vocab_size)
        save_tokenizer(tokenizer, out)
        writer.tokenizer = "../tokenizer.json"
        writer.packing = {
            "image_size": image_size, "window_size": window_size, "max_seq_len": max_seq_len,
        }  # fmt: skip
        for source, split, elements in parsed:
            kept, pixels = _load_images(elements, images, source, max_side, report)
            if not kept:
                report.skip(source, BadInput(f"{source}: no text or usable image", "no_content"))
                continue
            samples, dropped = pack_document(kept, tokenizer, image_size, window_size, max_seq_len)
            for d in dropped:
                what = d["element"].get("name", "text")
                report.skip(source, BadInput(f"{source}: {what}: {d['reason']}", d["kind"]))
            for sample in samples:
                imgs = [pixels[id(el)] for el in sample if el["type"] == "image"]
                writer.add(split, sample, source, imgs)
    return report.finish(out, writer.counts())


def _load_images(elements, images_dir, source, max_side, report):
    """Drop image elements whose file is missing or unreadable (reporting each); return
    the kept elements and their decoded pixels keyed by id() of the element dict, which
    pack_document passes through unchanged."""
    kept, pixels = [], {}
    for el in elements:
        if el["type"] == "image":
            path = resolve_image(el["name"], images_dir)
            if not path.is_file():
                msg = f"image '{el['name']}' referenced in {source} not found at {path}"
                report.skip(str(path), BadInput(msg, "missing_image"))
                continue
            try:
                pixels[id(el)] = load_rgb(path, max_side=max_side)
            except BadInput as e:
                report.skip(str(path), BadInput(f"{e.reason} (referenced in {source})", e.kind))
                continue
        kept.append(el)
    return kept, pixels
