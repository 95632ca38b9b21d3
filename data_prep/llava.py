"""`prep llava`: the LLaVA pretraining files (chat.json + images folder or zip) -> shards.

The paper pretrains on LLaVA-CC3M-Pretrain-595K; `blip_laion_cc_sbu_558k.json`
(LLaVA-Pretrain) has the same schema: a JSON list of
`{"id", "image", "conversations": [{"from": "human", "value": "...<image>..."},
{"from": "gpt", "value": CAPTION}]}`.

- image_only: one image-only sample per entry (the paper's image-only pretraining set);
  the conversation is not read.
- mixed: one document per entry in the paper's format, as in the authors' own example
  (`Provide a brief description of the given image. <|image|>GCC_train_002582585.jpg
  <|/image|> olive oil is ...`): the human turn's text around `<image>` with the image in
  its place, then the caption (`--prompt keep`); or only the image and the caption
  (`--prompt drop`). An entry whose image is missing or unreadable is skipped whole.

Entries keep the JSON's order; the split is by image name (stable, see shards.py).
Malformed entries and missing or unreadable images are skipped and reported.
"""

import json
from pathlib import Path

from .documents import CLOSE, OPEN, parse_document_authors
from .errors import BadInput, UsageError
from .imageio import shard_image
from .images import first_in_authors_order
from .mixed import _check_geometry, build_documents, check_text_mode
from .pipeline import WORKER, run_items
from .shards import DatasetWriter, assign_splits
from .sources import MissingImage, image_spec, open_images

MODES = ("image_only", "mixed")
PROMPTS = ("keep", "drop")
IMAGE_TOKEN = "<image>"


def read_entries(path: Path) -> list:
    """The JSON list; UsageError (one line, naming the file) if it is not one."""
    try:
        data = json.loads(Path(path).read_bytes())
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e}") from e
    except ValueError as e:
        raise UsageError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, list):
        raise UsageError(f"{path} is not a JSON list of entries (LLaVA chat.json format)")
    if not data:
        raise UsageError(f"{path} holds no entries")
    return data


def entry_image(entry, where: str) -> str:
    if not isinstance(entry, dict):
        raise BadInput(f"{where}: entry is not a JSON object", "malformed_entry")
    name = entry.get("image")
    if not isinstance(name, str) or not name.strip():
        raise BadInput(f"{where}: no \"image\" file name", "malformed_entry")
    return name.strip()


def entry_elements(entry, where: str, prompt: str, text: str = "strip") -> list[dict]:
    """The entry as a document in the paper's format (see the module docstring). Under
    `text` "authors", the document's text: the prompt's text before `<image>`, the tagged
    image, the text after it and the caption, each stripped, joined by one space (which
    gives the authors' example sample_1.txt from its LLaVA entry), read by their parser
    (documents.parse_document_authors): a prompt that starts with the image loses it."""
    name = entry_image(entry, where)
    turns = entry.get("conversations")
    if not isinstance(turns, list):
        raise BadInput(f"{where}: no \"conversations\" list", "malformed_entry")
    said = {}
    for turn in turns:
        if isinstance(turn, dict) and isinstance(turn.get("value"), str):
            said.setdefault(turn.get("from"), turn["value"])
    if "human" not in said or not said.get("gpt", "").strip():
        raise BadInput(f"{where}: needs a \"human\" turn and a non-empty \"gpt\" turn",
                       "malformed_entry")  # fmt: skip
    human, caption = said["human"], said["gpt"].strip()
    if any(tag in text for tag in (OPEN, CLOSE) for text in (human, caption)):
        raise BadInput(f"{where}: text contains {OPEN} or {CLOSE}", "malformed_entry")
    if human.count(IMAGE_TOKEN) != 1:
        raise BadInput(f"{where}: the human turn must hold {IMAGE_TOKEN} exactly once",
                       "malformed_entry")  # fmt: skip
    before, after = (t.strip() for t in human.split(IMAGE_TOKEN))
    if text == "authors":
        doc = " ".join(t for t in (before, f"{OPEN}{name}{CLOSE}", after, caption) if t)
        return parse_document_authors(doc, where)
    image = {"type": "image", "name": name}
    parts = [before, image, after] if prompt == "keep" else [image]
    parts.append(caption)
    return [p if isinstance(p, dict) else {"type": "text", "text": p} for p in parts if p]


def build_llava(
    json_path: Path,
    images: Path,
    out: Path,
    *,
    mode: str = "image_only",
    prompt: str = "keep",
    image_size: int = 224,
    window_size: int = 16,
    max_seq_len: int = 1024,
    vocab_size: int = 32000,
    val_fraction: float = 0.05,
    shard_size: int = 1000,
    max_side: int = 224,
    store: str = "original",
    seed: int = 0,
    tokenizer: Path | None = None,
    text: str = "strip",
    limit: int | None = None,
    workers: int = 1,
    progress: bool | None = None,
    overwrite: bool = False,
) -> dict:
    """Write the LLaVA entries as image-only or mixed samples; return the report. `limit`
    keeps the first N entries in the authors' order of their image files
    (images.first_in_authors_order: by file name, as the authors list the unpacked images)."""
    json_path, out = Path(json_path), Path(out)
    if mode not in MODES or prompt not in PROMPTS:
        raise ValueError(f"mode must be one of {MODES} and prompt one of {PROMPTS}")
    if mode == "mixed":
        check_text_mode(text, tokenizer)
        if text == "authors" and prompt == "drop":
            raise UsageError("--text authors with --prompt drop starts every document with its "
                             "image, which the authors' parser cuts off: use --prompt keep")  # fmt: skip
    spec = image_spec(images)
    entries = read_entries(json_path)
    chosen = range(len(entries))
    if limit is not None:
        named = [i for i, e in enumerate(entries) if _name_or_none(e) is not None]
        keep = first_in_authors_order([_name_or_none(entries[i]) for i in named], limit)
        chosen = [named[k] for k in sorted(keep)]
    args = {
        "command": "llava", "json": str(json_path), "images": str(images), "out": str(out),
        "mode": mode, "val_fraction": val_fraction, "shard_size": shard_size,
        "max_side": max_side, "store": store, "seed": seed, "limit": limit,
    }  # fmt: skip
    if mode == "image_only":
        named = []
        for i in chosen:
            entry, where = entries[i], f"{json_path.name}#{i}"
            try:
                named.append((where, entry_image(entry, where), None))
            except BadInput as e:
                named.append((where, None, e))  # nothing is written for it
        split = assign_splits([n for _, n, e in named if e is None], seed, val_fraction)
        items = [(split.get(n, "train"), (where, n, e)) for where, n, e in named]
        writer = DatasetWriter(out, "images", shard_size, args, len(items), overwrite)
        if writer.complete:
            return writer.saved_report()
        config = {"images": spec, "max_side": max_side, "store": store}
        return run_items(writer, items, llava_image_work, config, workers=workers,
                         progress=progress, label="prep llava")  # fmt: skip
    _check_geometry(image_size, window_size)
    parsed = []  # (where, image name, elements or None, BadInput or None)
    for i in chosen:
        entry, where = entries[i], f"{json_path.name}#{i}"
        try:
            parsed.append((where, entry_image(entry, where),
                           entry_elements(entry, where, prompt, text), None))  # fmt: skip
        except BadInput as e:
            parsed.append((where, None, None, e))
    split = assign_splits([n for _, n, els, _ in parsed if els is not None], seed, val_fraction)
    documents = [(where, split.get(n, "train"), els, e) for where, n, els, e in parsed]
    args.update(prompt=prompt, image_size=image_size, window_size=window_size,
                max_seq_len=max_seq_len, vocab_size=vocab_size, text=text)  # fmt: skip
    return build_documents(
        documents, spec, out, args, image_size=image_size, window_size=window_size,
        max_seq_len=max_seq_len, vocab_size=vocab_size, shard_size=shard_size,
        max_side=max_side, store=store, tokenizer=tokenizer, require_images=True,
        workers=workers, progress=progress, overwrite=overwrite, label="prep llava", text=text,
    )  # fmt: skip


def _name_or_none(entry) -> str | None:
    try:
        return entry_image(entry, "")
    except BadInput:
        return None


def llava_image_work(payload):
    """Worker: one entry's image -> one image-only sample, or a skip."""
    where, name, err = payload
    if err is not None:
        return [], [(where, err)]
    if "image_source" not in WORKER:
        WORKER["image_source"] = open_images(WORKER["images"])
    try:
        path, data = WORKER["image_source"].read(name)
    except MissingImage as e:
        return [], [(e.where, BadInput(f"{where}: image not found at {e.where}", "missing_image"))]
    except BadInput as e:
        return [], [(name, e)]
    try:
        img = shard_image(data, WORKER["max_side"], WORKER["store"])
    except BadInput as e:
        return [], [(path, BadInput(e.reason.replace("<bytes>", path), e.kind))]
    return [([{"type": "image", "name": name}], where, [img])], []
