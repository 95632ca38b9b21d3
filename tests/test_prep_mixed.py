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

SAMPLES = sorted(Path("/work/shared/data/upw_mixed_samples").glob("sample_*.txt"))
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


@pytest.mark.parametrize("path", SAMPLES, ids=[p.name for p in SAMPLES])
def test_paper_samples_parse(path):
    elements = parse_document(read_document(path), path.name)
    names = [e["name"] for e in elements if e["type"] == "image"]
    assert names == re.findall(r"<\|image\|>(.*?)<\|/image\|>", path.read_text())
    assert all(e["text"] and e["text"] == e["text"].strip() for e in elements if "text" in e)


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


def placeholder_images(folder: Path, docs: list[Path]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, doc in enumerate(docs):
        for name in re.findall(r"<\|image\|>(.*?)<\|/image\|>", doc.read_text()):
            Image.new("RGB", (20 + 10 * i, 16), (40 * i, 90, 200)).save(folder / name.strip())


def read_split(folder):
    index = json.loads((folder / "index.json").read_text())
    urls = [str(folder / s["name"]) for s in index["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False)) if urls else []
    assert len(samples) == index["num_samples"]
    assert sum(len([k for k in s if k.startswith("img")]) for s in samples) == index["num_images"]
    return index, samples


def test_paper_samples_build(tmp_path, capsys):
    placeholder_images(tmp_path / "img", SAMPLES)
    out = tmp_path / "out"
    argv = ["mixed", str(SAMPLES[0].parent), "--images", str(tmp_path / "img"), "--out", str(out)]
    argv += ["--image-size", "32", "--window-size", "8", "--max-seq-len", "48"]
    assert main([*argv, "--vocab-size", "500", "--val-fraction", "0"]) == 0
    assert "tokenizer:" in capsys.readouterr().out
    tokenizer = load_tokenizer(out / "tokenizer.json")
    index, samples = read_split(out / "train")
    assert index["kind"] == "mixed" and index["tokenizer"] == "../tokenizer.json"
    assert index["packing"] == {"image_size": 32, "window_size": 8, "max_seq_len": 48}
    assert index["num_images"] == 8
    seen = []
    for s in samples:
        doc = json.loads(s["json"])
        assert doc["source"] in {p.name for p in SAMPLES}
        assert layout_len(doc["elements"], tokenizer, 32, 8) <= 49
        for el in doc["elements"]:
            if el["type"] == "image":
                img = Image.open(io.BytesIO(s[el["file"]]))
                assert img.mode == "RGB" and img.size == (el["width"], el["height"])
                seen.append(el["name"])
            else:
                assert el["text"] in (SAMPLES[0].parent / doc["source"]).read_text()
    assert sorted(seen) == sorted(p.name for p in (tmp_path / "img").iterdir())
    report = json.loads((out / "report.json").read_text())
    assert report["inputs_seen"] == 4 and report["skipped"] == []


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
    placeholder_images(tmp_path / "img", SAMPLES)
    for name in ("a", "b"):
        build_mixed(SAMPLES[0].parent, tmp_path / "img", tmp_path / name, image_size=32,
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
