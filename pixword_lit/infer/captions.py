"""`pixword eval captions`: does the model read what the image says?

For every validation document whose text continues after its last image, the prompt is the
document up to and including that image, then a fixed prefix (default `The text says "`, the
part every glyph answer shares). The **answer** is the true continuation after the prefix, cut
at the first `end` marker (default `"`: the quoted string); the **prediction** is the greedy
continuation, cut the same way. Reported:

- `eval/exact_match`: fraction of documents whose prediction equals the answer exactly;
- `eval/cer`: character error rate (torchmetrics `CharErrorRate`: edits / answer characters,
  summed over all documents);
- `eval/answer_nll`: teacher-forced mean nats per token of the whole true continuation after
  the prefix (tokens of that text element; `</s>` excluded), summed over documents / tokens.

Beside them, the controls of infer/controls.py, fitted on the train split (default: the run's
data.train): `eval/blind_nll` (the answer NLL of an image-blind prior), `eval/blind_exact_match`
(always the most frequent train answer) and `eval/chance_exact_match` (a guess drawn from the
train answers); and every number for val answers seen in train and unseen apart.

Glyph shards say what was drawn (`glyph.text_height` etc., data_prep/README.md), so exact match
and CER are also broken down by the glyph height in pixels after the resize to image_size,
relative to the window size: in fixed buckets, or, for `--task reading` shards (exact ink
heights), one row per height. Outputs: RUN/eval/captions.json, captions.md, captions.png; the
numbers of SUMMARY_KEYS are added to RUN/summary.json so `pixword compare` shows them, when the
eval is of the run's last checkpoint made as its fit's eval would be (not an earlier one's).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torchmetrics.text import CharErrorRate

from pixword_lit.data.elements import build_sample, collate
from pixword_lit.files import atomic_save, atomic_write, write_json
from pixword_lit.infer.controls import Prior, continuation, control_scores, fit_prior
from pixword_lit.infer.generate import GenerateError, Sampling
from pixword_lit.infer.load import TrainedModel, documents, load_run, run_prompts
from pixword_lit.model.tokens import IGNORE
from pixword_lit.system.checkpoints import checkpoint_step

# glyph height after resize, in windows: edges of the breakdown's buckets
HEIGHT_BUCKETS = [0.0, 0.5, 0.75, 1.0, 1.5, math.inf]
SUMMARY_KEYS = ("eval/exact_match", "eval/cer", "eval/answer_nll", "eval/blind_nll",
                "eval/blind_exact_match", "eval/chance_exact_match", "eval/exact_match_seen",
                "eval/exact_match_unseen")


@dataclass
class Doc:
    key: str
    elements: list  # prompt: document up to its last image, then the prefix
    rest: str  # true continuation after the prefix
    answer: str  # rest cut at the end marker
    image: bytes  # the last image (for the picture)
    height_windows: float | None  # glyph height after resize / window size, if known
    exact_height: bool = False  # the height is the exact ink height (--task reading)


def cut(text: str, end: str) -> str:
    return (text.split(end, 1)[0] if end else text).strip()


def load_docs(run: TrainedModel, spec: str, prefix: str, end: str,
              limit: int | None) -> tuple[list[Doc], dict]:
    size, window = run.cfg.model.image_size, run.cfg.model.window_size
    docs, skipped = [], {"no_text_after_image": 0, "no_prefix": 0}
    for key, raw, els, last in documents(spec):
        rest, why = continuation(els, last, prefix)
        if rest is None:
            skipped[why] += 1
            continue
        elements = run.encode(els[: last + 1], raw, key) + [run.text(prefix)]
        img = els[last]
        height, glyph = None, img.get("glyph", {})
        if glyph:  # pixels of the stored image -> pixels after resize, in windows
            height = glyph["text_height"] * size / max(img["width"], img["height"]) / window
        docs.append(Doc(key, elements, rest, cut(rest, end), raw[img["file"]], height,
                        glyph.get("task") == "reading"))
        if limit and len(docs) >= limit:
            break
    return docs, skipped


@torch.no_grad()
def answer_nll(run: TrainedModel, docs: list[Doc], batch_size: int) -> list[tuple[float, int]]:
    """Teacher-forced summed nats and token count of each doc's true continuation."""
    out = []
    p = run.cfg.model.window_size**2
    for i in range(0, len(docs), batch_size):
        samples, spans = [], []
        for d in docs[i : i + batch_size]:
            ids = run.text(d.rest)
            s = build_sample([*d.elements, ids], run.vocab, run.cfg.data.max_seq_len + len(ids))
            n = len(s["input_ids"])  # the last input is the last answer token (target </s>)
            spans.append((n - 1 - len(ids), n - 1))  # inputs whose targets are the answer tokens
            samples.append(s)
        batch = collate(samples, run.vocab.pix_pad, p)
        logits = run.model(batch).logits
        ce = F.cross_entropy(logits.float().transpose(1, 2), batch["targets"], ignore_index=IGNORE,
                             reduction="none")  # (B, T)
        for b, (lo, hi) in enumerate(spans):
            out.append((float(ce[b, lo:hi].sum()), hi - lo))
    return out


def _bucket(h: float | None, exact: bool = False) -> str:
    if h is None:
        return "unknown"
    if exact:  # one row per drawn height
        return f"{h:.3g}"
    for lo, hi in zip(HEIGHT_BUCKETS, HEIGHT_BUCKETS[1:]):
        if lo <= h < hi:
            return f"{lo:g}-{hi:g}" if math.isfinite(hi) else f">={lo:g}"
    return "unknown"


def _group(records: list[dict], prior: Prior) -> dict:
    """Exact match, CER, answer NLL and the controls of a group of records."""
    nats, tokens = sum(r["nll"] for r in records), sum(len(r["ids"]) for r in records)
    return {**scores([(r["prediction"], r["answer"]) for r in records]),
            "answer_nll": nats / tokens if tokens else float("nan"), **control_scores(prior, records)}


def scores(pairs: list[tuple[str, str]]) -> dict:
    if not pairs:
        return {"n": 0, "exact_match": float("nan"), "cer": float("nan")}
    cer = CharErrorRate()
    preds, refs = zip(*pairs)
    return {"n": len(pairs), "exact_match": sum(p == r for p, r in pairs) / len(pairs),
            "cer": float(cer(list(preds), list(refs)))}


def eval_captions(ckpt: str, data: str | None = None, prefix: str | None = None, end: str | None = None,
                  out_dir: str | None = None, batch_size: int = 16, limit: int | None = None,
                  max_new_tokens: int | None = None, train: str | None = None,
                  tokenizer: str | None = None) -> dict:
    """Evaluate a checkpoint; outputs go to RUN/eval (or out_dir), numbers into RUN/summary.json.
    data, prefix, end and train default to the run's own config (data.val, eval.prefix,
    eval.end, data.train: the split the controls are fitted on); `tokenizer` (--tokenizer) for
    a checkpoint that holds none."""
    run = load_run(ckpt, tokenizer)
    out = Path(out_dir) if out_dir else _run_dir(ckpt) / "eval"
    e = run.cfg.eval
    result = evaluate_run(run, data or run.cfg.data.val, e.prefix if prefix is None else prefix,
                          e.end if end is None else end, out, batch_size, limit, max_new_tokens,
                          label=str(ckpt), train=train)
    d = run.cfg.data  # the eval describes the run when it is the one fit made with eval.captions
    same = data in (None, d.val) and limit == e.limit and train in (None, d.train)
    _update_summary(_run_dir(ckpt) / "summary.json", result, ckpt, same)
    return result


def evaluate_run(run: TrainedModel, spec: str, prefix: str, end: str, out: Path, batch_size: int = 16,
                 limit: int | None = None, max_new_tokens: int | None = None,
                 label: str = "final model", train: str | None = None) -> dict:
    docs, skipped = load_docs(run, spec, prefix, end, limit)
    if not docs:
        raise GenerateError(f"--data {spec}: no document continues after its last image with {prefix!r}")
    train = train or run.cfg.data.train
    prior = fit_prior(run, train, prefix, end, cut)
    longest = max(len(run.text(d.rest)) for d in docs)
    sampling = Sampling(max_new_tokens=max_new_tokens or longest + 4)
    gens = run_prompts(run, [{"input": d.key, "prompt": prefix, "elements": d.elements} for d in docs],
                       sampling, batch_size)
    nlls = answer_nll(run, docs, batch_size)
    records = []
    for d, g, (nats, _) in zip(docs, gens, nlls):
        pred = cut(g["output"], end)
        records.append({"input": d.key, "answer": d.answer, "prediction": pred, "exact": pred == d.answer,
                        "output": g["output"], "stop": g["stop"], "height_windows": d.height_windows,
                        "bucket": _bucket(d.height_windows, d.exact_height),
                        "seen": d.answer in prior.answers, "nll": nats, "ids": run.text(d.rest).tolist()})
    groups = {"all": records, "seen": [r for r in records if r["seen"]],
              "unseen": [r for r in records if not r["seen"]]}
    by_seen = {k: _group(v, prior) for k, v in groups.items()}
    by_height = {b: scores([(r["prediction"], r["answer"]) for r in records if r["bucket"] == b])
                 for b in sorted({r["bucket"] for r in records}, key=bucket_order)}
    a = by_seen["all"]
    result = {
        "checkpoint": label, "data": spec, "train": train, "prefix": prefix, "end": end,
        "eval/exact_match": a["exact_match"], "eval/cer": a["cer"], "eval/answer_nll": a["answer_nll"],
        "eval/blind_nll": a["blind_nll"], "eval/blind_exact_match": a["blind_exact_match"],
        "eval/chance_exact_match": a["chance_exact_match"],
        "eval/exact_match_seen": by_seen["seen"]["exact_match"],
        "eval/exact_match_unseen": by_seen["unseen"]["exact_match"],
        "documents": len(docs), "skipped": skipped, "train_answers": prior.n,
        "distinct_train_answers": len(prior.answers), "most_frequent_train_answer": prior.most_frequent(),
        "window_size": run.cfg.model.window_size, "image_size": run.cfg.model.image_size,
        "by_seen": by_seen, "by_glyph_height_windows": by_height, "records": records,
    }
    write_outputs(out, result, docs)
    return result


def bucket_order(b: str) -> float:
    if b == "unknown":
        return math.inf
    return float(b.lstrip(">=").split("-")[0])


def _run_dir(ckpt: str) -> Path:
    p = Path(ckpt).resolve()
    return p.parent.parent if p.parent.name == "checkpoints" else p.parent


def write_outputs(out: Path, result: dict, docs: list[Doc]) -> None:
    atomic_write(out / "captions.json", json.dumps(result, indent=1, ensure_ascii=False))
    lines = [f"Reading eval of `{result['checkpoint']}` on `{result['data']}` "
             f"({result['documents']} documents; prefix `{result['prefix']}`, answer cut at "
             f"`{result['end']}`; image_size {result['image_size']}, window {result['window_size']})", "",
             "| glyph height (windows) | n | exact match | CER |", "|---|---|---|---|"]
    for b, s in result["by_glyph_height_windows"].items():
        lines.append(f"| {b} | {s['n']} | {s['exact_match']:.3f} | {s['cer']:.3f} |")
    lines.append(f"| **all** | {result['documents']} | {result['eval/exact_match']:.3f} | "
                 f"{result['eval/cer']:.3f} |")
    lines += ["", f"Controls fitted on `{result['train']}` ({result['train_answers']} train answers, "
              f"{result['distinct_train_answers']} distinct; infer/controls.py): blind = the answer "
              "NLL of an image-blind prior and the exact match of always the most frequent train "
              "answer; chance = the expected exact match of a guess drawn from the train answers.", "",
              "| val answers | n | exact match | CER | answer NLL | blind NLL | blind exact | chance |",
              "|---|---|---|---|---|---|---|---|"]
    for k, g in result["by_seen"].items():
        lines.append(f"| {k} | {g['n']} | {g['exact_match']:.3f} | {g['cer']:.3f} | {g['answer_nll']:.4f} | "
                     f"{g['blind_nll']:.4f} | {g['blind_exact_match']:.3f} | {g['chance_exact_match']:.4f} |")
    lines += ["", "NLL in nats per token of the continuation after the prefix; seen: the answer is "
              "one of the train answers."]
    atomic_write(out / "captions.md", "\n".join(lines) + "\n")
    atomic_save(out / "captions.png",
                lambda tmp: picture(result["records"], docs).save(tmp, format="PNG"))


def picture(records: list[dict], docs: list[Doc], n: int = 24) -> Image.Image:
    """One row per document: the image (x2), the answer, the prediction (red when wrong)."""
    rows = []
    for r, d in list(zip(records, docs))[:n]:
        img = Image.open(io.BytesIO(d.image)).convert("RGB")
        img = img.resize((img.width * 2, img.height * 2), Image.NEAREST)
        row = Image.new("RGB", (img.width + 330, max(img.height, 40) + 6), "white")
        row.paste(img, (3, 3))
        draw = ImageDraw.Draw(row)
        draw.text((img.width + 10, 4), f"truth: {r['answer']}", fill=(0, 0, 0))
        ok = r["exact"]
        draw.text((img.width + 10, 20), f"{'ok ' if ok else 'X  '}pred: {r['prediction']}",
                  fill=(0, 120, 0) if ok else (200, 0, 0))
        rows.append(row)
    if not rows:
        return Image.new("RGB", (10, 10), "white")
    width = max(r.width for r in rows)
    sheet = Image.new("RGB", (width, sum(r.height for r in rows)), "white")
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height
    return sheet


def _update_summary(path: Path, result: dict, ckpt, same: bool) -> None:
    """The run's summary.json gets the eval's numbers only when they describe the run: the
    checkpoint of its last step, evaluated as its fit would (eval.captions: the run's
    data.val, eval.limit and data.train). An earlier checkpoint, or another --data, --limit or
    --train, leave it as it is (the numbers are in the eval's own outputs), saying so."""
    if not path.exists():
        return
    summary = json.loads(path.read_text())
    if not same:
        why = "--data, --limit or --train other than the run's eval"
    elif (step := checkpoint_step(Path(ckpt))) != summary.get("steps"):
        why = f"step {step} is not the run's last step {summary.get('steps')}"
    else:
        why = None
    if why:
        print(f"{path} not updated ({why}): the eval's numbers are in its captions.json")
        return
    summary.update({k: result[k] for k in SUMMARY_KEYS})
    write_json(path, summary)
