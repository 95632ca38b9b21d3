"""data_prep: document parsing, tokenizer, packing and `prep mixed` builds."""

import io
import json
import re
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from data_prep.cli import main
from data_prep.documents import parse_document, read_document, resolve_image
from data_prep.errors import BadInput
from data_prep.mixed import build_mixed
from data_prep.pack import count_tokens, image_cost, pack_document
from data_prep.tokenizer import SPECIAL_TOKENS, load_tokenizer, train_tokenizer

# The authors' four example documents, when the project's shared data sits beside the
# repository (a plain clone has none; the test that uses them is then skipped).
AUTHORS_SAMPLES = Path(__file__).resolve().parents[1].parent / "shared/data/upw_mixed_samples"

# Documents in the paper's format written by the tests: several images per document,
# long text, non-ASCII text, whitespace around tags, a missing image, an unclosed tag.
DOCS = {
    "sample_1.txt": "Provide a brief description of the given image. "
    "<|image|>GCC_train_002582585.jpg<|/image|> olive oil is a healthy ingredient used liberally .",
    "flowers.txt": (
        "Blooming in the sun, blue and red flowers paint vivid strokes on nature's canvas. " * 6
        + "\n\n<|image|>flower1.jpg<|/image|>\n<|image|>flower2.jpg<|/image|>\n"
        + "<|image|>flower3.jpg<|/image|>\n\n"
        + "In contrast, red flowers burst with fiery energy. Bold roses and tulips. " * 8
    ),
    "sub/moto.txt": "张雪的摩托车是一头哑光黑色的野兽。 Zhang Xue's motorcycle — très élégante. "
    "<|image|>jiche1.jpeg<|/image|> Ça roule ! 🏍️ Fahrräder sind schön. "
    "<|image|> jiche2.jpeg <|/image|> The motorcycle blends with nature.",
    "pets.txt": "I have two cute pets.\n\n<|image|>my_dog.jpg<|/image|> \nThis is my dog.\n\n"
    "<|image|>my_cat.jpg<|/image|>\nThis is my cat.",
    "missing.txt": "A photo that was lost: <|image|>lost_photo.jpg<|/image|> but the text stays.",
    "unclosed.txt": "A tag left open <|image|>flower1.jpg and the text goes on.",
}
IMAGES = ["GCC_train_002582585.jpg", "flower1.jpg", "flower2.jpg", "flower3.jpg",
          "jiche1.jpeg", "jiche2.jpeg", "my_dog.jpg", "my_cat.jpg"]  # fmt: skip
LOREM = (
    "Blooming in the sun, blue and red flowers paint vivid strokes on nature's canvas. "
    "Bold roses, vibrant poppies, and striking tulips command attention with their hue. "
)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer([LOREM * 3, "olive oil is a healthy ingredient", "漢字かな"], 400)


def layout_len(sample, tokenizer, image_size, window_size):
    """Length of the sample as the loader lays it out: <s> ... </s>."""
    n = 2
    for el in sample:
        if el["type"] == "image":
            n += image_cost(image_size, window_size)
        else:
            n += count_tokens(tokenizer, el["text"])
    return n


# --- parsing ----------------------------------------------------------------------------


def test_parse_paper_example():
    text = (
        "Provide a brief description of the given image. <|image|>GCC_train_002582585.jpg"
        "<|/image|> olive oil is a healthy ingredient used liberally ."
    )
    assert parse_document(text, "s.txt") == [
        {"type": "text", "text": "Provide a brief description of the given image."},
        {"type": "image", "name": "GCC_train_002582585.jpg"},
        {"type": "text", "text": "olive oil is a healthy ingredient used liberally ."},
    ]


def test_parse_keeps_inner_text_strips_ends_and_names():
    text = "\n  a  b\n\nc <|image|> x/y.png\n<|/image|>\n\n<|image|>z.png<|/image|>  tail \n"
    assert parse_document(text, "s") == [
        {"type": "text", "text": "a  b\n\nc"},
        {"type": "image", "name": "x/y.png"},
        {"type": "image", "name": "z.png"},  # whitespace-only piece between images dropped
        {"type": "text", "text": "tail"},
    ]
    assert parse_document("  \n ", "s") == []


@pytest.mark.parametrize(
    "text,kind,offset",
    [
        ("ab <|image|>x.png", "unclosed_tag", 3),
        ("ab x.png<|/image|>", "stray_tag", 8),
        ("<|image|>a<|image|>b<|/image|>", "nested_tag", 10),
        ("ok <|image|>  <|/image|>", "empty_image_name", 3),
        ("<|image|>a<|/image|> <|/image|>", "stray_tag", 21),
    ],
)
def test_parse_errors_name_source_and_offset(text, kind, offset):
    with pytest.raises(BadInput) as e:
        parse_document(text, "docs/bad.txt")
    assert e.value.kind == kind
    assert "docs/bad.txt" in e.value.reason and f"character {offset}" in e.value.reason


def test_read_document(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xc3\xa9 ok \xff\xfe")
    with pytest.raises(BadInput) as e:
        read_document(bad)
    assert e.value.kind == "non_utf8" and str(bad) in e.value.reason and "byte 9" in e.value.reason
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeffhello é".encode())
    assert read_document(bom) == "hello é"


def test_resolve_image(tmp_path):
    assert resolve_image("a/b.png", tmp_path) == tmp_path / "a" / "b.png"
    assert resolve_image("/abs/c.jpg", tmp_path) == Path("/abs/c.jpg")


def write_docs(folder: Path, docs: dict = DOCS) -> Path:
    for name, text in docs.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
    return folder


@pytest.mark.parametrize("name", [n for n in DOCS if n != "unclosed.txt"])
def test_paper_format_documents_parse(name, tmp_path):
    path = write_docs(tmp_path) / name
    elements = parse_document(read_document(path), name)
    names = [e["name"] for e in elements if e["type"] == "image"]
    tags = re.findall(r"<\|image\|>(.*?)<\|/image\|>", path.read_text(encoding="utf-8"))
    assert names == [t.strip() for t in tags] and names
    assert all(e["text"] and e["text"] == e["text"].strip() for e in elements if "text" in e)
    if name == "sub/moto.txt":
        text = " ".join(e["text"] for e in elements if "text" in e)
        assert all(piece in text for piece in ("张雪", "très", "🏍️"))


# --- tokenizer --------------------------------------------------------------------------


def test_tokenizer_special_ids(tok, tmp_path):
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4, 5]
    assert tok.get_vocab_size() <= 400
    tok.save(str(tmp_path / "t.json"))
    loaded = load_tokenizer(tmp_path / "t.json")
    assert loaded.encode("red <|image|>").ids == tok.encode("red <|image|>").ids
    assert loaded.decode(loaded.encode("Bold roses").ids) == "Bold roses"


# --- packing ----------------------------------------------------------------------------


def img(n: int) -> dict:
    return {"type": "image", "name": f"{n}.png"}


def test_pack_keeps_images_whole_within_budget(tok):
    elements = [{"type": "text", "text": LOREM}, img(0), img(1), {"type": "text", "text": "ok"}]
    elements += [img(2), {"type": "text", "text": LOREM * 2}, img(3)]
    samples, dropped = pack_document(elements, tok, 32, 8, 40)  # an image costs 18 of 39
    assert dropped == []
    assert all(layout_len(s, tok, 32, 8) <= 41 for s in samples)
    flat = [el for s in samples for el in s]
    assert [el for el in flat if el["type"] == "image"] == [img(i) for i in range(4)]
    assert len(samples) > 3


def test_pack_splits_long_text_into_substrings(tok):
    text = (LOREM * 6).strip()
    samples, dropped = pack_document([{"type": "text", "text": text}], tok, 224, 16, 30)
    assert not dropped and len(samples) > 5
    pieces = [el["text"] for s in samples for el in s]
    assert all(p in text and p == p.strip() for p in pieces)
    assert "".join(pieces).replace(" ", "") == text.replace(" ", "")
    assert all(layout_len(s, tok, 224, 16) <= 31 for s in samples)


def test_pack_splits_text_without_spaces(tok):
    text = "漢字かな" * 40 + "x" * 100
    samples, _ = pack_document([{"type": "text", "text": text}], tok, 16, 8, 12)
    pieces = [el["text"] for s in samples for el in s]
    assert "".join(pieces) == text
    assert all(layout_len(s, tok, 16, 8) <= 13 for s in samples)


def test_pack_drops_image_that_cannot_fit(tok):
    elements = [{"type": "text", "text": "a caption"}, {"type": "image", "name": "big.png"}]
    samples, dropped = pack_document(elements, tok, 64, 8, 32)  # image needs 66
    assert samples == [[{"type": "text", "text": "a caption"}]]
    assert dropped[0]["element"] == {"type": "image", "name": "big.png"}
    assert dropped[0]["kind"] == "image_too_large"


# --- builds -----------------------------------------------------------------------------


def placeholder_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", (20 + 10 * i, 16), (40 * i % 256, 90, 200)).save(folder / name.strip())


def read_split(folder):
    index = json.loads((folder / "index.json").read_text())
    urls = [str(folder / s["name"]) for s in index["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False)) if urls else []
    assert len(samples) == index["num_samples"]
    assert sum(len([k for k in s if k.startswith("img")]) for s in samples) == index["num_images"]
    return index, samples


def check_build(docs: Path, out: Path, names: list[str]) -> tuple[dict, list]:
    """Shards of a mixed build: every sample within the budget, every text piece a
    substring of its document, every image a decodable RGB of the stated size."""
    tokenizer = load_tokenizer(out / "tokenizer.json")
    index, samples = read_split(out / "train")
    assert index["kind"] == "mixed" and index["tokenizer"] == "../tokenizer.json"
    assert index["packing"] == {"image_size": 32, "window_size": 8, "max_seq_len": 48}
    seen = []
    for s in samples:
        doc = json.loads(s["json"])
        assert doc["source"] in names
        assert layout_len(doc["elements"], tokenizer, 32, 8) <= 49
        for el in doc["elements"]:
            if el["type"] == "image":
                img = Image.open(io.BytesIO(s[el["file"]]))
                assert img.mode == "RGB" and img.size == (el["width"], el["height"])
                seen.append(el["name"])
            else:
                assert el["text"] in (docs / doc["source"]).read_text(encoding="utf-8")
                ids = tokenizer.encode(el["text"], add_special_tokens=False).ids
                assert tokenizer.decode(ids) == el["text"]  # NFKC-stable, non-ASCII intact
    return index, seen


PACKING = ["--image-size", "32", "--window-size", "8", "--max-seq-len", "48", "--workers", "1"]


def test_paper_format_build(tmp_path, capsys):
    docs = write_docs(tmp_path / "docs")
    placeholder_images(tmp_path / "img", IMAGES)
    out = tmp_path / "out"
    argv = ["mixed", str(docs), "--images", str(tmp_path / "img"), "--out", str(out), *PACKING]
    assert main([*argv, "--vocab-size", "500", "--val-fraction", "0"]) == 0
    assert "tokenizer:" in capsys.readouterr().out
    index, seen = check_build(docs, out, list(DOCS))
    assert index["num_images"] == len(IMAGES) and sorted(seen) == sorted(IMAGES)
    report = json.loads((out / "report.json").read_text())
    assert report["inputs_seen"] == len(DOCS)
    assert report["skipped_counts"] == {"missing_image": 1, "unclosed_tag": 1}
    assert {s["path"] for s in report["skipped"]} == {
        "unclosed.txt", str(tmp_path / "img" / "lost_photo.jpg")}  # fmt: skip
    _, samples = read_split(out / "train")
    sources = [json.loads(s["json"])["source"] for s in samples]
    assert sources.count("flowers.txt") > 2  # long text packed into several samples
    assert "missing.txt" in sources  # its text is kept without the lost image


@pytest.mark.skipif(
    not AUTHORS_SAMPLES.is_dir(),
    reason=f"the authors' example documents are not beside the repository ({AUTHORS_SAMPLES})",
)
def test_authors_samples_build(tmp_path):
    paths = sorted(AUTHORS_SAMPLES.glob("sample_*.txt"))
    assert paths
    names = []
    for path in paths:
        elements = parse_document(read_document(path), path.name)
        names += [e["name"] for e in elements if e["type"] == "image"]
        tags = re.findall(r"<\|image\|>(.*?)<\|/image\|>", path.read_text(encoding="utf-8"))
        assert [e["name"] for e in elements if e["type"] == "image"] == [t.strip() for t in tags]
    placeholder_images(tmp_path / "img", names)
    out = tmp_path / "out"
    report = build_mixed(AUTHORS_SAMPLES, tmp_path / "img", out, image_size=32, window_size=8,
                         max_seq_len=48, vocab_size=500, val_fraction=0)  # fmt: skip
    assert report["inputs_seen"] == len(paths) and report["skipped"] == []
    _, seen = check_build(AUTHORS_SAMPLES, out, [p.name for p in paths])
    assert sorted(seen) == sorted(names)


def test_bad_documents_and_images_are_reported(tmp_path):
    docs, imgs = tmp_path / "docs", tmp_path / "img"
    (docs / "sub").mkdir(parents=True)
    imgs.mkdir()
    Image.new("RGB", (8, 6), "red").save(imgs / "a.png")
    (imgs / "corrupt.png").write_text("no pixels here")
    (docs / "good.txt").write_text(
        "see <|image|>a.png<|/image|> and <|image|>gone.png<|/image|> end"
    )
    (docs / "sub" / "also.txt").write_text("text only, in a subfolder")
    (docs / "badimg.txt").write_text("caption <|image|>corrupt.png<|/image|>")
    (docs / "latin1.txt").write_bytes("café".encode("latin-1"))
    (docs / "unclosed.txt").write_text("x <|image|>a.png")
    (docs / "stray.txt").write_text("x <|/image|>")
    (docs / "nested.txt").write_text("<|image|><|image|>a.png<|/image|>")
    (docs / "noname.txt").write_text("<|image|> <|/image|>")
    (docs / "onlymissing.txt").write_text("<|image|>gone.png<|/image|>")
    (docs / "blank.txt").write_text("  \n")
    (docs / ".hidden.txt").write_text("ignored")
    (docs / "notes.md").write_text("not a document")
    report = build_mixed(docs, imgs, tmp_path / "out", image_size=16, window_size=8,
                         max_seq_len=64, vocab_size=300, val_fraction=0)  # fmt: skip
    assert report["inputs_seen"] == 10
    assert report["skipped_counts"] == {
        "empty_image_name": 1, "missing_image": 2, "nested_tag": 1, "no_content": 2,
        "non_utf8": 1, "not_an_image": 1, "stray_tag": 1, "unclosed_tag": 1,
    }  # fmt: skip
    assert all(s["path"] and s["reason"] for s in report["skipped"])
    _, samples = read_split(tmp_path / "out" / "train")
    docs_written = {json.loads(s["json"])["source"]: json.loads(s["json"]) for s in samples}
    assert set(docs_written) == {"good.txt", "sub/also.txt", "badimg.txt"}
    good = docs_written["good.txt"]["elements"]
    assert [e.get("name", e.get("text")) for e in good] == ["see", "a.png", "and", "end"]
    assert [e["type"] for e in docs_written["badimg.txt"]["elements"]] == ["text"]


def test_mixed_builds_are_byte_identical(tmp_path):
    docs = write_docs(tmp_path / "docs")
    placeholder_images(tmp_path / "img", IMAGES)
    for name in ("a", "b"):
        build_mixed(docs, tmp_path / "img", tmp_path / name, image_size=32,
                    window_size=8, max_seq_len=40, vocab_size=400, val_fraction=0.5)  # fmt: skip
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*"))
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*"))
    for rel in files:
        if rel.name != "index.json" and (tmp_path / "a" / rel).is_file():
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_mixed_unusable_input_exits_2(tmp_path, capsys):
    imgs = tmp_path / "img"
    imgs.mkdir()
    docs = tmp_path / "docs"
    docs.mkdir()
    out = ["--out", str(tmp_path / "out")]
    assert main(["mixed", str(docs), "--images", str(imgs), *out]) == 2  # no *.txt
    assert str(docs) in capsys.readouterr().err
    assert main(["mixed", str(tmp_path / "none.txt"), "--images", str(imgs), *out]) == 2
    (docs / "d.txt").write_text("hello")
    assert main(["mixed", str(docs), "--images", str(tmp_path / "noimg"), *out]) == 2
    assert "noimg" in capsys.readouterr().err
    bad_geometry = ["--image-size", "30", "--window-size", "16"]
    assert main(["mixed", str(docs), "--images", str(imgs), *out, *bad_geometry]) == 2
    (docs / "d.txt").write_bytes(b"\xff")
    assert main(["mixed", str(docs / "d.txt"), "--images", str(imgs), *out]) == 2
    assert "no samples" in capsys.readouterr().err


# --- split and tokenizer ------------------------------------------------------------------


def marker(i: int) -> str:
    """A word only document i contains (letters only, so BPE can learn it whole)."""
    return "zq" + "".join(chr(97 + int(d)) for d in f"{i:02d}") + "word"


def test_split_is_per_document_and_tokenizer_sees_train_only(tmp_path):
    docs, imgs = tmp_path / "docs", tmp_path / "img"
    docs.mkdir()
    placeholder_images(imgs, [f"{i}.png" for i in range(12)])
    for i in range(12):  # long enough to be packed into several samples each
        body = f"{marker(i)} " * 40
        (docs / f"d{i:02d}.txt").write_text(f"{body}<|image|>{i}.png<|/image|> {body}")
    out = tmp_path / "out"
    build_mixed(docs, imgs, out, image_size=16, window_size=8, max_seq_len=40,
                vocab_size=3000, val_fraction=0.5, seed=2)  # fmt: skip
    sources = {}
    for split in ("train", "val"):
        _, samples = read_split(out / split)
        for s in samples:
            doc = json.loads(s["json"])
            sources.setdefault(doc["source"], set()).add(split)
            assert all(marker(int(doc["source"][1:3])) in el["text"]
                       for el in doc["elements"] if el["type"] == "text")  # fmt: skip
    assert all(len(splits) == 1 for splits in sources.values())  # no document in both
    train = {name for name, splits in sources.items() if splits == {"train"}}
    assert len(sources) == 12 and 0 < len(train) < 12
    vocab = load_tokenizer(out / "tokenizer.json").get_vocab()
    for i in range(12):
        learned = any(marker(i) in token for token in vocab)
        assert learned == (f"d{i:02d}.txt" in train), f"document {i}: learned={learned}"


def test_existing_tokenizer_is_reused(tmp_path, tok, capsys):
    docs = write_docs(tmp_path / "docs")
    placeholder_images(tmp_path / "img", IMAGES)
    given = tmp_path / "given.json"
    tok.save(str(given))
    out = tmp_path / "out"
    argv = ["mixed", str(docs), "--images", str(tmp_path / "img"), "--out", str(out), *PACKING]
    assert main([*argv, "--tokenizer", str(given), "--val-fraction", "0"]) == 0
    assert (out / "tokenizer.json").read_bytes() == given.read_bytes()  # not retrained
    index, seen = check_build(docs, out, list(DOCS))
    assert sorted(seen) == sorted(IMAGES)
    assert index["args"]["tokenizer"] == str(given)
    capsys.readouterr()
    # Another tokenizer file is another build: continuing the finished one is refused.
    other = tmp_path / "other.json"
    train_tokenizer(["some other text"], 300).save(str(other))
    assert main([*argv, "--tokenizer", str(other), "--val-fraction", "0"]) == 2
    assert "tokenizer" in capsys.readouterr().err


def test_tokenizer_without_the_special_ids_is_refused(tmp_path, capsys):
    from tokenizers import Tokenizer, models, trainers

    docs = write_docs(tmp_path / "docs")
    placeholder_images(tmp_path / "img", IMAGES)
    wrong = Tokenizer(models.BPE(unk_token="<unk>"))
    order = ["<pad>", "<unk>", "<s>", "</s>", "<|image|>", "<|/image|>"]  # ids 0-3 swapped
    wrong.train_from_iterator(["a b c"], trainers.BpeTrainer(vocab_size=50, special_tokens=order))
    none = Tokenizer(models.BPE())
    none.train_from_iterator(["a b c"], trainers.BpeTrainer(vocab_size=50))
    bad = {"wrong.json": wrong, "none.json": none}
    for name, t in bad.items():
        t.save(str(tmp_path / name))
    (tmp_path / "junk.json").write_text("not a tokenizer")
    out = tmp_path / "out"
    argv = ["mixed", str(docs), "--images", str(tmp_path / "img"), "--out", str(out), *PACKING]
    for name in [*bad, "junk.json", "absent.json"]:
        assert main([*argv, "--tokenizer", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(tmp_path / name) in err, err
        if name in bad:
            assert "at ids 0-5" in err
    assert not out.exists()  # refused before anything was written


def test_prep_mixed_keeps_a_validation_document(tmp_path):
    """Documents few enough that 5% of them rounds to none still leave one for validation."""
    from data_prep.shards import assign_split

    names = [n for n in (f"doc{i}.txt" for i in range(40)) if assign_split(n, 0, 0.05) == "train"][:4]
    docs = write_docs(tmp_path / "docs", {n: f"look <|image|>a.png<|/image|> at {n}" for n in names})
    placeholder_images(tmp_path / "img", ["a.png"])
    out = tmp_path / "out"
    assert main(["mixed", str(docs), "--images", str(tmp_path / "img"), "--out", str(out), *PACKING,
                 "--vocab-size", "300"]) == 0
    val, _ = read_split(out / "val")
    train, _ = read_split(out / "train")
    assert val["num_samples"] == 1 and train["num_samples"] == 3
