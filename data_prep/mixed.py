"""`prep mixed`: documents with inline images -> packed mixed samples (method.md section 6).

Two passes: first every document is read and parsed (text only, cheap), the split is
chosen per document (so no document leaks across splits) and the tokenizer is trained on
the train split's text (or an existing one is checked and reused); then, in the workers,
each document's images are loaded, the document is packed to the sequence budget with
that tokenizer, and its samples are written. `prep llava` feeds its entries through the
same second pass (`build_documents`).
"""

import os
from pathlib import Path

from .documents import CLOSE, OPEN, TEXT_MODES, parse_document, parse_document_authors, read_document
from .errors import BadInput, UsageError
from .imageio import shard_image
from .images import first_in_authors_order, list_files
from .pack import pack_document
from .pipeline import WORKER, run_items
from .shards import DatasetWriter, assign_splits
from .sources import MissingImage, image_spec, open_images
from .tokenizer import load_checked_tokenizer, load_tokenizer, save_tokenizer, train_tokenizer


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
    max_side: int | None = None,
    store: str = "original",
    seed: int = 0,
    tokenizer: Path | None = None,
    text: str = "strip",
    limit: int | None = None,
    workers: int = 1,
    progress: bool | None = None,
    overwrite: bool = False,
) -> dict:
    """Write packed samples of every usable document; return the report.
    `max_side` None means `image_size`; `tokenizer` reuses that tokenizer.json; `text`
    "authors" parses as the authors' code (documents.parse_document_authors); `limit` keeps
    the first N documents in the authors' order (images.first_in_authors_order)."""
    docs, out = Path(docs), Path(out)
    _check_geometry(image_size, window_size)
    check_text_mode(text, tokenizer)
    spec = image_spec(images)
    found = find_documents(docs)
    if not found:
        raise UsageError(f"no *.txt documents found under {docs}")
    if limit is not None:
        keep = first_in_authors_order([source for _, source in found], limit)
        found = [f for i, f in enumerate(found) if i in keep]
    max_side = image_size if max_side is None else max_side
    parse = parse_document_authors if text == "authors" else parse_document
    parsed = []  # (source, elements or None, BadInput or None)
    for path, source in found:
        try:
            parsed.append((source, parse(read_document(path), source), None))
        except BadInput as e:
            parsed.append((source, None, e))
    split = assign_splits([s for s, els, _ in parsed if els is not None], seed, val_fraction)
    documents = [(s, split.get(s, "train"), els, e) for s, els, e in parsed]
    args = {
        "command": "mixed", "docs": str(docs), "images": str(images), "out": str(out),
        "image_size": image_size, "window_size": window_size, "max_seq_len": max_seq_len,
        "vocab_size": vocab_size, "val_fraction": val_fraction, "shard_size": shard_size,
        "max_side": max_side, "store": store, "seed": seed, "text": text, "limit": limit,
    }  # fmt: skip
    return build_documents(
        documents, spec, out, args, image_size=image_size, window_size=window_size,
        max_seq_len=max_seq_len, vocab_size=vocab_size, shard_size=shard_size,
        max_side=max_side, store=store, tokenizer=tokenizer, require_images=False, text=text,
        workers=workers, progress=progress, overwrite=overwrite, label="prep mixed",
    )  # fmt: skip


def check_text_mode(text: str, tokenizer: Path | None) -> None:
    """`--text authors` is the authors' text handling with the authors' tokenizer: their
    src/model/tokenizer.json (a trained one would split the same text differently)."""
    if text not in TEXT_MODES:
        raise ValueError(f"text must be one of {TEXT_MODES}, not {text!r}")
    if text == "authors" and tokenizer is None:
        raise UsageError("--text authors needs --tokenizer PATH: the authors' tokenizer.json "
                         "(HaunLeung/upw src/model/tokenizer.json)")  # fmt: skip


def _check_geometry(image_size: int, window_size: int) -> None:
    if image_size % window_size:
        raise UsageError(f"image size {image_size} is not a multiple of window size {window_size}")


def build_documents(
    documents: list[tuple[str, str, list | None, BadInput | None]],
    spec: dict,
    out: Path,
    args: dict,
    *,
    image_size: int,
    window_size: int,
    max_seq_len: int,
    vocab_size: int,
    shard_size: int,
    max_side: int,
    store: str,
    tokenizer: Path | None,
    require_images: bool,
    workers: int,
    progress: bool | None,
    overwrite: bool,
    label: str,
    kind: str = "mixed",
    text: str = "strip",
) -> dict:
    """Pass 2 for parsed documents `(source, split, elements, error)`: tokenizer, then
    images, packing and shards. `require_images`: a document that loses an image is
    skipped whole (a caption without its image), instead of kept without it."""
    reused = None
    if tokenizer is not None:
        reused = load_checked_tokenizer(tokenizer)  # before touching OUT
        args = {**args, "tokenizer": str(tokenizer),
                "tokenizer_sha256": _sha256(Path(tokenizer).read_bytes())}  # fmt: skip
    writer = DatasetWriter(out, kind, shard_size, args, len(documents), overwrite)
    if writer.complete:
        return writer.saved_report()
    if reused is not None:
        _copy_atomic(Path(tokenizer), out / "tokenizer.json")
        tok = reused
    elif writer.resumed and (out / "tokenizer.json").is_file():
        tok = load_tokenizer(out / "tokenizer.json")  # the one the finished shards used
    else:
        train_text = (
            el["text"]
            for _, split, elements, _ in documents
            if split == "train" and elements
            for el in elements
            if el["type"] == "text"
        )
        tok = train_tokenizer(train_text, vocab_size)
        save_tokenizer(tok, out)
    writer.tokenizer = "../tokenizer.json"
    writer.packing = {"image_size": image_size, "window_size": window_size,
                      "max_seq_len": max_seq_len}  # fmt: skip
    items = [(split, (source, elements, err)) for source, split, elements, err in documents]
    config = {
        "tokenizer_json": tok.to_str(), "images": spec, "max_side": max_side, "store": store,
        "image_size": image_size, "window_size": window_size, "max_seq_len": max_seq_len,
        "require_images": require_images, "text": text,
    }  # fmt: skip
    return run_items(writer, items, document_work, config, workers=workers,
                     progress=progress, label=label)  # fmt: skip


def document_work(payload):
    """Worker: one parsed document -> its packed samples and its skips."""
    source, elements, err = payload
    if err is not None:
        return [], [(source, err)]
    skips = []
    kept, pixels, lost = _load_images(elements, source, skips)
    if WORKER["require_images"] and lost:
        return [], skips
    if not kept:
        skips.append((source, BadInput(f"{source}: no text or usable image", "no_content")))
        return [], skips
    w = WORKER
    samples, dropped = pack_document(
        kept, w["tokenizer"], w["image_size"], w["window_size"], w["max_seq_len"]
    )
    for d in dropped:
        what = d["element"].get("name", "text")
        skips.append((source, BadInput(f"{source}: {what}: {d['reason']}", d["kind"])))
    out = []
    for sample in samples:
        imgs = [pixels[id(el)] for el in sample if el["type"] == "image"]
        out.append((sample, source, imgs))
    return out, skips


def _load_images(elements, source, skips):
    """Drop image elements whose file is missing or unreadable (adding a skip for each);
    return the kept elements, their stored images keyed by id() of the element dict (which
    pack_document passes through unchanged) and how many were lost. Under `--text authors`
    a lost image leaves its two tags as text, scored, as the authors' parser leaves them
    when it cannot read an image."""
    if "image_source" not in WORKER:
        WORKER["image_source"] = open_images(WORKER["images"])
    images = WORKER["image_source"]
    kept, pixels, lost = [], {}, 0
    for el in elements:
        if el["type"] == "image" and not _load_image(el, images, source, skips, pixels):
            lost += 1
            if WORKER.get("text") == "authors":
                kept.append({"type": "text", "text": OPEN + CLOSE})
            continue
        kept.append(el)
    return kept, pixels, lost


def _load_image(el, images, source, skips, pixels) -> bool:
    """Store el's image in pixels[id(el)]; False (and a skip) when it cannot be used."""
    try:
        where, data = images.read(el["name"])
    except MissingImage as e:
        msg = f"image '{el['name']}' referenced in {source} not found at {e.where}"
        skips.append((e.where, BadInput(msg, "missing_image")))
        return False
    except BadInput as e:
        skips.append((el["name"], BadInput(f"{e.reason} (referenced in {source})", e.kind)))
        return False
    try:
        pixels[id(el)] = shard_image(data, WORKER["max_side"], WORKER["store"])
    except BadInput as e:
        reason = f"{e.reason} (referenced in {source})".replace("<bytes>", where)
        skips.append((where, BadInput(reason, e.kind)))
        return False
    return True


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.write_bytes(src.read_bytes())
    os.replace(tmp, dst)
