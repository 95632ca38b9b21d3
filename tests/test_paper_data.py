"""The paper configs' data as the authors' code reads it (issue #28): one resize, the
authors' subset, their text handling.

References are written here, from reading HaunLeung/upw `src/model/dataset.py` and
`train_model.py`, independent of the code under test: their resize (`read_image`: longer side
to S, short side `int((short / long) * S)`, torchvision's `Resize` on a PIL image, which is
PIL's bilinear resize), their file order (`list_and_sort_files`: `name.lower()`) and their
text pieces (`parse_start_end`, `parse_chunk`: tags inside the text, tokenized whole).
"""

from __future__ import annotations

import io
import json
import re
import shlex
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from data_prep.cli import main as prep
from data_prep.documents import parse_document_authors
from data_prep.llava import entry_elements
from pixword_lit.data.builder import SampleBuilder
from pixword_lit.data.shards import read_shard
from pixword_lit.model.components.folding import UniformFolding
from pixword_lit.model.tokens import IMG_END, IMG_START, Vocab
from pixword_lit.system.build import build_parts
from pixword_lit.system.config import REPO_ROOT, ConfigError, load_config

ASSETS = Path(__file__).parent / "assets" / "upw_mixed_samples"
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|image|>", "<|/image|>"]
PROMPT = "Provide a brief description of the given image."
PHOTOS = {"GCC_train_000003.jpg": (300, 200), "GCC_train_000001.jpg": (200, 300),
          "gcc_train_000002.jpg": (640, 427), "GCC_train_000004.jpg": (263, 230)}  # fmt: skip


def photo(w: int, h: int, seed: int) -> Image.Image:
    """Photo-like: a colour gradient with noise (so every resize filter shows)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8))


def authors_resize(img: Image.Image, size: int) -> np.ndarray:
    """`read_image` of the authors: their size arithmetic, then PIL bilinear (what torchvision's
    Resize does to a PIL image)."""
    img = img.convert("RGB")
    w, h = img.size
    if h > w:
        rh, rw = size, int((float(w) / float(h)) * size)
    else:
        rw, rh = size, int((float(h) / float(w)) * size)
    return np.asarray(img.resize((rw, rh), Image.BILINEAR))


def authors_tokenizer(path: Path) -> Path:
    """A tokenizer configured as the authors' src/model/tokenizer.json (NFKC, ByteLevel with
    add_prefix_space and no regex split, so a space joins the token before it: `.Ġ`), with
    the six specials at ids 0-5; trained here on a little text (theirs is not in the repository)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    text = [(ASSETS / n).read_text() for n in ("sample_1.txt", "sample_4.txt")]
    text += ["The text ends here. Then it goes on. A photo. " * 20]
    tok.train_from_iterator(text, trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    return authors_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


def tiny_builder(tok, *over):
    cfg = load_config(None, ["data.mode=mixed", "model.image_size=16", "model.window_size=4",
                             "data.max_seq_len=512", *over])
    folding = UniformFolding(64)
    return SampleBuilder(cfg.model, cfg.data, Vocab(tok.get_vocab_size(), folding.n_pix), folding, tok)


def samples_of(out: Path, split: str = "train"):
    index = json.loads((out / split / "index.json").read_text())
    return [raw for s in index["shards"] for raw in read_shard(str(out / split / s["name"]))]


def word_stream(sample: dict) -> list:
    """<s> ... </s> with every window as "W" (the sample's inputs plus its final target)."""
    ids = [("W" if slot >= 0 else int(i)) for i, slot in zip(sample["input_ids"], sample["window_slot"])]
    return ids + [int(sample["targets"][-1])]


# ---- the authors' text handling ------------------------------------------------------------

def authors_stream(text: str, tok: Tokenizer, n_windows: int) -> list:
    """Their parse of a document without stray tags: trimmed from the first upper-case letter
    or `.?!, ` to the last `.?!, `; text pieces keep the tags next to them and are tokenized
    whole, <s> before the first, </s> after the last; an image is its windows."""
    start = next(i for i, c in enumerate(text) if c.isupper() or c in ".?!, ")
    text = text[start: max(text.rfind(c) for c in ".?!, ") + 1]
    parts = re.split(r"<\|image\|>.*?<\|/image\|>", text)
    pieces = [("" if i == 0 else "<|/image|>") + p + ("" if i == len(parts) - 1 else "<|image|>")
              for i, p in enumerate(parts)]
    out = [1]
    for i, piece in enumerate(pieces):
        ids = tok.encode(piece, add_special_tokens=False).ids
        if i < len(pieces) - 1:  # ... <|image|>: the image's windows come before <|/image|>
            ids = [*ids, *["W"] * n_windows]
        out += ids
    return out + [2]


@pytest.mark.parametrize("name", ["sample_1.txt", "sample_4.txt"])
def test_authors_text_gives_their_tokens(tmp_path, tokenizer_path, name):
    text = (ASSETS / name).read_text()
    images = tmp_path / "images"
    images.mkdir()
    for i, ref in enumerate(re.findall(r"<\|image\|>(.*?)<\|/image\|>", text)):
        photo(40, 30, i).save(images / ref.strip())
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / name).write_text(text)
    tok = Tokenizer.from_file(str(tokenizer_path))
    streams = {}
    for mode in ("authors", "strip"):
        out = tmp_path / mode
        assert prep(["mixed", str(docs), "--images", str(images), "--out", str(out), "--val-fraction",
                     "0", "--tokenizer", str(tokenizer_path), "--text", mode, "--image-size", "16",
                     "--window-size", "4", "--max-side", "0", "--workers", "1"]) == 0
        builder = tiny_builder(tok)
        (raw,) = samples_of(out)
        (unit,) = builder.units(raw)
        streams[mode] = word_stream(builder.build(unit))
    assert streams["authors"] == authors_stream(text, tok, 16)
    got = streams["authors"]
    before_image = got[got.index(IMG_START) - 1]
    after_image = got[got.index(IMG_END) + 1]
    if name == "sample_1.txt":  # "image. <|image|>": their tokenizer joins the space to the "."
        assert tok.id_to_token(before_image) == ".Ġ"
        assert tok.id_to_token(after_image).startswith("Ġ")  # " olive" keeps its space
    else:  # "pets.\n\n<|image|>" and "<|/image|> \nThis": the newlines are tokens
        assert "Ċ" in tok.id_to_token(before_image)
        assert tok.decode([t for t in got[got.index(IMG_END) + 1:][:3] if t != "W"]).startswith(" \n")
    assert streams["strip"] != streams["authors"]  # the default strips around the images


def test_authors_parser_cuts_a_leading_image_tag_and_keeps_stray_ones():
    assert parse_document_authors("<|image|>GCC_1.jpg<|/image|> Describe it. a dog .", "d") == [
        {"type": "text", "text": "GCC_1.jpg<|/image|> Describe it. a dog ."}]
    # a closing tag before the first image: the text starts at it (what precedes is dropped)
    assert parse_document_authors("Aa <|/image|> b <|image|>x.jpg<|/image|> c.", "d") == [
        {"type": "text", "text": "<|/image|> b "}, {"type": "image", "name": "x.jpg"},
        {"type": "text", "text": " c."}]
    # an unclosed tag stays text; the rest of the document is dropped
    assert parse_document_authors("A tag <|image|>x.jpg and more.", "d") == [
        {"type": "text", "text": "A tag <|image|>"}]


def test_llava_entry_in_authors_mode_is_their_sample_1():
    entry = {"id": "GCC_train_002582585", "image": "GCC_train_002582585.jpg", "conversations": [
        {"from": "human", "value": PROMPT + "\n<image>"},
        {"from": "gpt", "value": "olive oil is a healthy ingredient used liberally ."}]}
    want = parse_document_authors((ASSETS / "sample_1.txt").read_text(), "s")
    assert entry_elements(entry, "e", "keep", "authors") == want
    first = dict(entry, conversations=[{"from": "human", "value": "<image>\n" + PROMPT},
                                       entry["conversations"][1]])
    (only,) = entry_elements(first, "e", "keep", "authors")  # the authors' parser cuts the tag
    assert only == {"type": "text", "text": "GCC_train_002582585.jpg<|/image|> " + PROMPT
                    + " olive oil is a healthy ingredient used liberally ."}


def test_skipped_images_leave_their_tags_scored_under_keep(tmp_path, tokenizer_path):
    docs, images = tmp_path / "docs", tmp_path / "images"
    docs.mkdir()
    images.mkdir()
    photo(40, 30, 0).save(images / "big.jpg")
    photo(10, 8, 1).save(images / "small.jpg")  # both sides below image_size 16
    (docs / "d.txt").write_text("A big one. <|image|>big.jpg<|/image|> A small one. "
                                "<|image|>small.jpg<|/image|> A lost one. <|image|>lost.jpg<|/image|> End.")
    out = tmp_path / "out"
    assert prep(["mixed", str(docs), "--images", str(images), "--out", str(out), "--val-fraction", "0",
                 "--tokenizer", str(tokenizer_path), "--text", "authors", "--image-size", "16",
                 "--window-size", "4", "--max-side", "0", "--workers", "1"]) == 0
    (raw,) = samples_of(out)
    elements = json.loads(raw["json"])["elements"]
    assert {"type": "text", "text": "<|image|><|/image|>"} in elements  # the lost image's tags
    report = json.loads((out / "report.json").read_text())
    assert report["skipped_counts"] == {"missing_image": 1}
    tok = Tokenizer.from_file(str(tokenizer_path))
    kinds = {}
    for tags in ("keep", "drop"):
        b = tiny_builder(tok, "data.small_images=skip", f"data.skipped_image_tags={tags}")
        (unit,) = b.units(raw)
        s = b.build(unit)
        ids, targets = list(s["input_ids"]), list(s["targets"])
        pairs = [i for i in range(len(ids) - 1) if ids[i] == IMG_START and ids[i + 1] == IMG_END]
        kinds[tags] = [(targets[i - 1], targets[i]) for i in pairs]  # both tags are scored
    assert kinds["keep"] == [(IMG_START, IMG_END)] * 2  # the small one and the lost one
    assert kinds["drop"] == [(IMG_START, IMG_END)]  # only the lost one (prep kept its tags)


def test_authors_text_needs_a_tokenizer_and_keep(tmp_path, capsys, tokenizer_path):
    chat = tmp_path / "chat.json"
    chat.write_text("[]")
    base = ["llava", "--json", str(chat), "--images", str(tmp_path), "--out", str(tmp_path / "o"),
            "--mode", "mixed", "--text", "authors"]
    assert prep(base) == 2
    assert "--tokenizer" in capsys.readouterr().err
    assert prep([*base, "--tokenizer", str(tokenizer_path), "--prompt", "drop"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--prompt keep" in err


# ---- the authors' subset -------------------------------------------------------------------

def test_limit_takes_the_first_files_by_lower_cased_name(tmp_path):
    src = tmp_path / "imgs"
    src.mkdir()
    for i, name in enumerate(["c.png", "D.png", "b.png", "A.png"]):
        photo(20, 20, i).save(src / name)
    out = tmp_path / "out"
    assert prep(["images", str(src), "--out", str(out), "--limit", "2", "--val-fraction", "0",
                 "--workers", "1"]) == 0
    names = [json.loads(r["json"])["elements"][0]["name"] for r in samples_of(out)]
    assert sorted(names) == ["A.png", "b.png"]  # not A, D (a case-sensitive sort)
    chat = tmp_path / "chat.json"
    chat.write_text(json.dumps([{"image": n} for n in ["c.png", "b.png", "A.png", "D.png"]]))
    out2 = tmp_path / "out2"
    assert prep(["llava", "--json", str(chat), "--images", str(src), "--out", str(out2), "--limit",
                 "3", "--val-fraction", "0", "--workers", "1"]) == 0
    names = [json.loads(r["json"])["elements"][0]["name"] for r in samples_of(out2)]
    assert sorted(names) == ["A.png", "b.png", "c.png"]
    assert json.loads((out2 / "report.json").read_text())["inputs_seen"] == 3


# ---- one resize: every documented command gives the authors' pixels ------------------------

def documented_prep_commands() -> list[str]:
    """The prep commands for the paper configs' data folders (data/images, data/mixed) in their
    YAML headers, the paper sections of experiments/README.md and data_prep/README.md, and
    the top README's line for them."""
    texts = [(REPO_ROOT / "experiments" / f"{n}.yaml").read_text()
             for n in ("paper_image_only", "paper_mixed")]
    for path, heading in (("experiments/README.md", "## The paper's configs on GPUs"),
                          ("data_prep/README.md", "## Preparing the paper's data")):
        text = (REPO_ROOT / path).read_text()
        start = text.index(heading)
        texts.append(text[start: text.find("\n## ", start + 1)])
    texts += [line for line in (REPO_ROOT / "README.md").read_text().splitlines()
              if "pixword prep" in line and "paper" in line]
    cmds = [m.strip() for t in texts for m in re.findall(r"pixword prep [^\n`#()]*", t)]
    # the ones that write the configs' data.train / data.val (not e.g. a timing's OUT)
    return list(dict.fromkeys(c for c in cmds if re.search(r"--out data/(images|mixed)\b", c)))


@pytest.fixture(scope="module")
def paper_inputs(tmp_path_factory, tokenizer_path):
    root = tmp_path_factory.mktemp("paper_inputs")
    images, docs = root / "images", root / "docs"
    images.mkdir()
    docs.mkdir()
    entries = []
    with zipfile.ZipFile(root / "images.zip", "w") as z:
        for i, (name, (w, h)) in enumerate(PHOTOS.items()):
            buf = io.BytesIO()
            photo(w, h, i).save(buf, format="JPEG", quality=90)
            z.writestr(f"images/{name}", buf.getvalue())
            (images / name).write_bytes(buf.getvalue())
            entries.append({"id": name[:-4], "image": name, "conversations": [
                {"from": "human", "value": PROMPT + "\n<image>"},
                {"from": "gpt", "value": f"photo number {i} ."}]})
            (docs / f"doc{i}.txt").write_text(f"{PROMPT} <|image|>{name}<|/image|> photo {i} .")
    (root / "chat.json").write_text(json.dumps(entries))
    return {"chat.json": root / "chat.json", "images.zip": root / "images.zip",
            "/path/to/images": images, "/path/to/docs": docs,
            "/path/to/upw/src/model/tokenizer.json": tokenizer_path}


def test_documented_commands_give_the_authors_pixels(tmp_path, paper_inputs):
    cmds = documented_prep_commands()
    assert len(cmds) >= 4 and any("--mode mixed" in c for c in cmds)
    cfg = load_config(REPO_ROOT / "experiments" / "paper_mixed.yaml")
    builder = SampleBuilder(cfg.model, cfg.data, None, None)
    size = cfg.model.image_size
    originals = {n: Image.open(paper_inputs["/path/to/images"] / n) for n in PHOTOS}
    for k, cmd in enumerate(cmds):
        words = [str(paper_inputs.get(w, w)) for w in shlex.split(cmd)[2:]]
        words[words.index("--out") + 1] = str(tmp_path / f"out{k}")
        assert prep([*words, "--workers", "1"]) == 0, cmd
        seen = 0
        for split in ("train", "val"):
            index = json.loads((tmp_path / f"out{k}" / split / "index.json").read_text())
            assert index["resize"]["images_resized"] == 0, cmd
            for raw in samples_of(tmp_path / f"out{k}", split):
                for el in json.loads(raw["json"])["elements"]:
                    if el["type"] == "image":
                        got = builder.rgb(raw[el["file"]])
                        assert np.array_equal(got, authors_resize(originals[el["name"]], size)), cmd
                        seen += 1
        assert seen == len(PHOTOS), cmd


def test_fit_refuses_shards_prep_resized(tmp_path, paper_inputs):
    out = tmp_path / "small"
    assert prep(["llava", "--json", str(paper_inputs["chat.json"]), "--images",
                 str(paper_inputs["images.zip"]), "--out", str(out), "--workers", "1"]) == 0
    cfg = load_config(REPO_ROOT / "experiments" / "paper_image_only.yaml",
                      [f"data.train={out}/train", f"data.val={out}/val"])
    with pytest.raises(ConfigError) as e:
        build_parts(cfg, None)
    msg = str(e.value)
    assert "\n" not in msg and f"{out}/" in msg and "--max-side 0" in msg and "single_resize" in msg
    ok = load_config(REPO_ROOT / "experiments" / "paper_image_only.yaml",
                     [f"data.train={out}/train", f"data.val={out}/val", "data.single_resize=false"])
    build_parts(ok, None)  # without the promise the same shards are accepted
