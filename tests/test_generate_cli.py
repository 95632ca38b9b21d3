"""`pixword generate` on checkpoints of tiny trained runs: outputs, JSONL, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image

from data_prep.glyphs import PROMPT
from pixword_lit.cli import main
from pixword_lit.fit.train import fit
from pixword_lit.infer.generate import Sampling, generate_uncached
from pixword_lit.infer.load import image_prompts, load_run, read_image

AFTER = 'The text says "'


@pytest.fixture(scope="module")
def mixed_ckpt(glyph_shards, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gen_mixed")
    summary = fit(tiny_config(glyph_shards, tmp, "trainer.max_steps=4", "trainer.val_check_interval=4",
                              "eval.captions=true", "eval.limit=3"))
    ckpt = tmp / "run" / "checkpoints" / "last.ckpt"
    # what fit reported, kept before any test rewrites summary.json
    (tmp / "fit_summary.json").write_text(json.dumps(summary, default=str))
    return ckpt


@pytest.fixture(scope="module")
def plate(glyph_shards, tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "plate.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (10, 30, 3), dtype=np.uint8)).save(path)
    return path


def test_generate_one_image_prints_the_greedy_continuation(mixed_ckpt, plate, capsys):
    code = main(["generate", str(mixed_ckpt), "--image", str(plate), "--before", PROMPT,
                 "--prompt", AFTER, "--max-new-tokens", "5"])
    assert code == 0
    printed = capsys.readouterr().out.strip()
    # the same prompt through the uncached reference, built from the checkpoint alone
    run = load_run(str(mixed_ckpt))
    (p,) = image_prompts(run, [plate], PROMPT, AFTER)
    ref = generate_uncached(run.model, p["elements"], run.vocab, run.cfg.data.max_seq_len,
                            Sampling(max_new_tokens=5))
    assert printed.startswith(run.decode(ref.tokens))


def test_generate_images_and_data_write_jsonl(mixed_ckpt, plate, glyph_shards, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.open(plate).rotate(90 * i, expand=True).save(folder / f"p{i}.png")
    out = tmp_path / "gen.jsonl"
    assert main(["generate", str(mixed_ckpt), "--images", str(folder), "--out", str(out),
                 "--max-new-tokens", "3", "--batch-size", "2"]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["input"] for r in recs] == [str(folder / f"p{i}.png") for i in range(3)]
    for r in recs:
        assert set(r) >= {"input", "prompt", "output", "tokens", "stop", "seconds"}
        assert len(r["tokens"]) <= 3 and r["stop"] in ("eos", "image", "max_new_tokens")
    out2 = tmp_path / "val.jsonl"
    assert main(["generate", str(mixed_ckpt), "--data", f"{glyph_shards}/val", "--out", str(out2),
                 "--prompt", AFTER, "--max-new-tokens", "2"]) == 0
    recs = [json.loads(line) for line in out2.read_text().splitlines()]
    assert len(recs) == 16  # every glyph document continues after its image
    assert all(r["truth"].startswith(AFTER) for r in recs)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_bad_input_one_line_exit_2_nothing_written(mixed_ckpt, plate, glyph_shards, tmp_path, capsys):
    out = tmp_path / "never.jsonl"
    assert main(["generate", str(tmp_path / "missing.ckpt"), "--image", str(plate)]) == 2
    assert "missing.ckpt: no such file" in _error_line(capsys)
    text = tmp_path / "not_an_image.png"
    text.write_text("hello")
    assert main(["generate", str(mixed_ckpt), "--image", str(text)]) == 2
    assert "not_an_image.png" in _error_line(capsys)
    long_prompt = " ".join(["word"] * 200)  # data.max_seq_len is 64 in the tiny config
    assert main(["generate", str(mixed_ckpt), "--images", str(plate.parent), "--out", str(out),
                 "--prompt", long_prompt]) == 2
    assert "max_seq_len" in _error_line(capsys)
    assert not out.exists() and not out.with_name(out.name + ".tmp").exists()
    not_ckpt = tmp_path / "x.ckpt"
    not_ckpt.write_text("not a checkpoint")
    assert main(["generate", str(not_ckpt), "--image", str(plate)]) == 2
    assert "x.ckpt: not a checkpoint" in _error_line(capsys)
    # a checkpoint whose unpickling would run code is refused, and nothing runs
    from test_checkpoints import with_payload

    marker = tmp_path / "PWNED"
    evil = with_payload(mixed_ckpt, tmp_path / "evil.ckpt", marker)
    assert main(["generate", str(evil), "--image", str(plate)]) == 2
    assert "evil.ckpt: refused" in _error_line(capsys) and not marker.exists()


def test_image_only_checkpoint_refuses_to_generate_words(glyph_shards, plate, tmp_path, capsys):
    fit(tiny_config(glyph_shards, tmp_path, "trainer.max_steps=1", "trainer.val_check_interval=1",
                    "data.val_limit=4", mode="image_only"))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    capsys.readouterr()  # the fit's own output
    assert main(["generate", str(ckpt), "--image", str(plate)]) == 2
    assert "trained on images only" in _error_line(capsys)


def _levenshtein(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def test_eval_captions_numbers_by_hand_on_three_documents(mixed_ckpt, glyph_shards, tmp_path):
    import torch

    from pixword_lit.data.shards import read_shard
    from pixword_lit.infer.captions import eval_captions

    out = tmp_path / "eval"
    r = eval_captions(str(mixed_ckpt), f"{glyph_shards}/val", out_dir=str(out), limit=3)
    run = load_run(str(mixed_ckpt))
    raws = list(read_shard(str(sorted((glyph_shards / "val").glob("*.tar"))[0])))[:3]
    exact, edits, chars, nll, tokens = 0, 0, 0, 0.0, 0
    # the glyph heights after the resize to image_size 16, in 4 px windows, worked out by hand
    # from the three val documents of the seed-0 glyph shards (width x height, text height):
    # 37 x 12, 8 px: the longer side 37 -> 16, so 8 * 16/37 = 128/37 px = 32/37 windows;
    # 34 x 18, 12 px: 12 * 16/34 = 96/17 px = 24/17 windows; 34 x 17, 9 px: 72/17 px = 18/17
    by_hand = [((37, 12, 8), 32 / 37), ((34, 18, 12), 24 / 17), ((34, 17, 9), 18 / 17)]
    for raw, rec, (drawn, height_windows) in zip(raws, r["records"], by_hand, strict=True):
        els = json.loads(raw["json"])["elements"]
        caption = els[2]["text"]
        assert caption.startswith(AFTER)
        rest = caption[len(AFTER):]
        answer = rest.split('"')[0]
        prompt = [run.text(els[0]["text"]), run.image(raw[els[1]["file"]], "x"), run.text(AFTER)]
        ref = generate_uncached(run.model, prompt, run.vocab, 128, Sampling(max_new_tokens=32))
        pred = run.decode(ref.tokens).split('"')[0].strip()
        assert (rec["answer"], rec["prediction"]) == (answer, pred)
        exact += pred == answer
        edits, chars = edits + _levenshtein(pred, answer), chars + len(answer)
        # teacher-forced NLL through the KV-cache path (the eval uses the full forward)
        from pixword_lit.data.elements import collate
        from pixword_lit.infer.generate import prompt_sample

        cache = run.model.decoder.make_cache(1, 256)
        batch = collate([prompt_sample(prompt, run.vocab, 128)], run.vocab.pix_pad, 16)
        with torch.no_grad():
            logits = run.model.prefill(batch, cache)
            for t in run.text(rest):
                nll -= float(torch.log_softmax(logits[0].double(), -1)[t])
                tokens += 1
                logits = run.model.step(torch.tensor([t]), cache)
        g = els[1]
        assert (g["width"], g["height"], g["glyph"]["text_height"]) == drawn  # what was derived from
        assert rec["height_windows"] == pytest.approx(height_windows, rel=1e-12)
    assert r["documents"] == 3
    assert r["eval/exact_match"] == pytest.approx(exact / 3)
    assert r["eval/cer"] == pytest.approx(edits / chars)
    assert r["eval/answer_nll"] == pytest.approx(nll / tokens, rel=1e-5)
    for f in ("captions.json", "captions.md", "captions.png"):
        assert (out / f).stat().st_size > 0
    summary = json.loads((mixed_ckpt.parent.parent / "summary.json").read_text())
    assert summary["eval/exact_match"] == r["eval/exact_match"]
    # fit with eval.captions evaluated its in-memory final model (= last.ckpt) the same way
    for k in ("eval/exact_match", "eval/cer", "eval/answer_nll"):
        fit_summary = json.loads((mixed_ckpt.parents[2] / "fit_summary.json").read_text())
        assert fit_summary[k] == pytest.approx(r[k], rel=1e-6), k
    assert sum(b["n"] for b in r["by_glyph_height_windows"].values()) == 3


def test_eval_of_an_earlier_checkpoint_or_a_part_leaves_the_summary(mixed_ckpt, tmp_path, capsys):
    """summary.json holds the run's own eval: evaluating a checkpoint older than the run's last
    step, or fewer documents than its eval.limit, must not overwrite it (`pixword compare`
    would show those numbers as the run's); the eval of its last checkpoint made as fit made
    it does."""
    import shutil

    from pixword_lit.infer.captions import eval_captions

    run = tmp_path / "run"
    shutil.copytree(mixed_ckpt.parent.parent, run)
    path, ckpt = run / "summary.json", run / "checkpoints" / "last.ckpt"  # step 4, eval.limit 3
    base = json.loads(path.read_text())
    base["eval/exact_match"] = -1.0  # a marker no eval writes
    path.write_text(json.dumps({**base, "steps": 9}))  # as if the run had gone on to step 9
    eval_captions(str(ckpt), out_dir=str(tmp_path / "e1"), limit=3)
    assert json.loads(path.read_text())["eval/exact_match"] == -1.0
    assert "not updated (step 4 is not the run's last step 9)" in capsys.readouterr().out
    path.write_text(json.dumps(base))  # step 4 is the last step now, but only 2 documents
    eval_captions(str(ckpt), out_dir=str(tmp_path / "e2"), limit=2)
    assert json.loads(path.read_text())["eval/exact_match"] == -1.0
    assert "not updated (--data, --limit or --train other than the run's eval)" in capsys.readouterr().out
    r = eval_captions(str(ckpt), out_dir=str(tmp_path / "e3"), limit=3)  # as the fit's eval
    assert json.loads(path.read_text())["eval/exact_match"] == r["eval/exact_match"] != -1.0


def test_compare_draws_reading_by_height_and_shows_eval_columns(mixed_ckpt, tmp_path):
    from pixword_lit.grid.compare import collect, write_results

    run_dir = mixed_ckpt.parent.parent  # fit ran eval.captions: run/eval/captions.json exists
    res = write_results(collect([str(run_dir)]), tmp_path / "cmp")
    names = [p.name for p in res["files"]]
    assert "reading_by_height.png" in names
    md = (tmp_path / "cmp" / "summary.md").read_text()
    assert "eval/exact_match" in md and "eval/cer" in md


@pytest.mark.slow
def test_sample_and_complete_from_a_dense_checkpoint(glyph_shards, plate, mixed_ckpt, tmp_path, capsys):
    fit(tiny_config(glyph_shards, tmp_path, "model.objective.name=dense", "trainer.max_steps=2",
                    "trainer.val_check_interval=2", "data.val_limit=4", mode="image_only"))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    out = tmp_path / "samples"
    assert main(["generate", str(ckpt), "--sample", "2", "--out", str(out), "--seed", "3"]) == 0
    rec = json.loads((out / "samples.json").read_text())
    assert len(rec["samples"]) == 2
    pix = np.array(rec["samples"][0]["pix"])
    assert pix.shape == (16, 16)  # 16 px images in 4 px windows: 16 windows of 16 pixels
    assert rec["samples"][0]["sampled_pixels"] == 256 and rec["samples"][0]["logprob"] < 0
    assert Image.open(out / "samples.png").size[0] > 2 * 16
    again = tmp_path / "again"
    assert main(["generate", str(ckpt), "--sample", "2", "--out", str(again), "--seed", "3"]) == 0
    assert json.loads((again / "samples.json").read_text())["samples"] == rec["samples"]
    comp = tmp_path / "comp"
    assert main(["generate", str(ckpt), "--complete", str(plate), "--keep-rows", "3", "--out",
                 str(comp)]) == 0
    rec = json.loads((comp / "samples.json").read_text())
    assert rec["kept_window_rows"] == 1  # 3 pixel rows, rounded up to a whole 4 px window row
    # the 30 x 10 plate is 16 x 5 px after resize: below the kept row only pixel row 4 is valid
    assert rec["samples"][0]["sampled_pixels"] == 16
    run = load_run(str(ckpt), words=False)
    truth = run.image(read_image(plate), "plate")
    got = np.array(rec["samples"][0]["pix"])
    assert np.array_equal(got[:4], truth.pix[:4])  # the kept window row is the image's own
    assert np.array_equal(got[truth.pos < 0], truth.pix[truth.pos < 0])  # pad stays pad
    capsys.readouterr()
    assert main(["generate", str(mixed_ckpt), "--sample", "1", "--out", str(tmp_path / "no")]) == 2
    assert "first_pixel" in _error_line(capsys)
    assert not (tmp_path / "no" / "samples.json").exists()


# ---- a checkpoint that holds no word tokenizer (written before tokenizers were stored) ----
@pytest.fixture(scope="module")
def no_tokenizer_ckpt(mixed_ckpt, tmp_path_factory):
    import torch

    ckpt = torch.load(mixed_ckpt, map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["tokenizer"]  # the run's own, stored by fit
    ckpt["hyper_parameters"]["tokenizer"] = None
    path = tmp_path_factory.mktemp("no_tok") / "old.ckpt"
    torch.save(ckpt, path)
    return path


def test_a_checkpoint_without_a_tokenizer_names_the_option(no_tokenizer_ckpt, plate, tmp_path, capsys):
    out = tmp_path / "never.jsonl"
    for argv in (["--image", str(plate)], ["--images", str(plate.parent), "--out", str(out)]):
        assert main(["generate", str(no_tokenizer_ckpt), *argv, "--max-new-tokens", "2"]) == 2
        line = _error_line(capsys)
        assert line.startswith("pixword generate: error: ") and "old.ckpt" in line
        assert "holds no word tokenizer" in line and "--tokenizer PATH" in line
    assert not out.exists()


def test_generate_tokenizer_option_supplies_the_runs_tokenizer(no_tokenizer_ckpt, mixed_ckpt, plate,
                                                               glyph_shards, tmp_path, capsys):
    argv = ["--image", str(plate), "--before", PROMPT, "--prompt", AFTER, "--max-new-tokens", "5"]
    assert main(["generate", str(mixed_ckpt), *argv]) == 0
    stored = capsys.readouterr().out
    # the run's tokenizer.json (where prep wrote it) gives what the stored copy gave
    assert main(["generate", str(no_tokenizer_ckpt), *argv, "--tokenizer",
                 str(glyph_shards / "tokenizer.json")]) == 0
    assert capsys.readouterr().out == stored
    # a missing file, a file that is no tokenizer, one without the special tokens at ids 0-5
    # and one with more words than the model: each one line naming --tokenizer and the file
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a tokenizer"}')
    big = tmp_path / "big.json"
    from data_prep.tokenizer import save_tokenizer, train_tokenizer

    texts = [f"word{i} other{i * 7} thing{i * 13}" for i in range(400)]
    save_tokenizer(train_tokenizer(texts, 2000), tmp_path)
    (tmp_path / "tokenizer.json").rename(big)
    from tokenizers import Tokenizer, models

    plain = tmp_path / "plain.json"  # a word tokenizer without pixword's special tokens
    Tokenizer(models.WordLevel({"<unk>": 0, "the": 1}, unk_token="<unk>")).save(str(plain))
    for path, says in ((tmp_path / "missing.json", "no such file"), (bad, "cannot be loaded"),
                       (plain, "special tokens"), (big, "words, the model")):
        assert main(["generate", str(no_tokenizer_ckpt), *argv, "--tokenizer", str(path)]) == 2
        line = _error_line(capsys)
        assert "--tokenizer" in line and says in line and str(path) in line, line


def test_eval_captions_takes_tokenizer_for_a_checkpoint_without_one(no_tokenizer_ckpt, glyph_shards,
                                                                    tmp_path, capsys):
    """The no-tokenizer error tells the user to pass --tokenizer: `eval captions` takes it too."""
    argv = ["eval", "captions", str(no_tokenizer_ckpt), "--data", f"{glyph_shards}/val", "--limit", "1",
            "--max-new-tokens", "2", "--out", str(tmp_path / "eval")]
    assert main(argv) == 2
    line = _error_line(capsys)
    assert line.startswith("pixword eval captions: error: ") and "--tokenizer PATH" in line
    assert main([*argv, "--tokenizer", str(glyph_shards / "tokenizer.json")]) == 0
    assert json.loads((tmp_path / "eval" / "captions.json").read_text())["documents"] == 1
