"""pixword: one language model over word tokens and pix tokens (Leung & Wang, 2026).

For notebooks::

    import pixword_lit as pw

    cfg = pw.load_config("experiments/quickstart.yaml", ["model.dim=128"])
    model = pw.build_model(cfg, n_words=1024)          # untrained PixWordModel
    model = pw.load_model("runs/quickstart/checkpoints/last.ckpt")  # trained, eval mode
    pw.export("runs/quickstart/checkpoints/last.ckpt", "exports/quickstart")
    run = pw.load_run("exports/quickstart")            # model, tokenizer, image windows
    prompt = [run.image(pw.read_image("plate.png"), "plate.png"), run.text('The text says "')]

    from pixword_lit.infer.generate import Sampling, generate
    (g,) = generate(run.model, [prompt], run.vocab, run.cfg.data.max_seq_len, Sampling())
    print(run.decode(g.tokens))

Every function imports what it needs when called: `import pixword_lit` loads no torch (the
`pixword` command and every submodule import this file first).
"""

from __future__ import annotations

__all__ = ["build_model", "export", "load_config", "load_model", "load_run", "read_image"]


def load_config(path=None, overrides=()):
    """An experiment YAML (None: the base config) with dotted `key=value` overrides ->
    the validated DictConfig, exactly as `pixword fit PATH OVERRIDES` resolves it."""
    from pixword_lit.system.config import load_config as load

    return load(path, list(overrides))


def build_model(cfg, n_words: int | None = None, folding_state: dict | None = None):
    """A freshly initialized `PixWordModel` of `cfg` (seed it with torch.manual_seed first).
    n_words: the word vocabulary (default model.vocab_size, else the size of data.tokenizer,
    else the special tokens alone for image_only); folding_state: a fitted palette
    (`{"name": "palette", "palette": [[r, g, b], ...]}`); uniform folding needs none."""
    from pixword_lit.model.components.folding import folding_from_state
    from pixword_lit.model.pixword import PixWordModel
    from pixword_lit.model.tokens import Vocab
    from pixword_lit.system.build import load_tokenizer, make_folding, word_vocab_size
    from pixword_lit.system.config import ConfigError

    if n_words is None:
        d = cfg.data
        if d.mode == "mixed" and d.tokenizer is None and cfg.model.vocab_size is None:
            raise ConfigError("build_model: a mixed model needs its word vocabulary: pass n_words, "
                              "or set model.vocab_size or data.tokenizer")
        n_words = word_vocab_size(cfg, load_tokenizer(cfg, None) if d.tokenizer else None)
    folding = folding_from_state(folding_state) if folding_state else make_folding(cfg, None, None)
    return PixWordModel(cfg.model, Vocab(n_words, folding.n_pix), folding)


def load_model(path):
    """A checkpoint (.ckpt file or sharded fsdp folder) or an export folder -> its trained
    `PixWordModel` on the CPU, in eval mode (`.cfg`, `.vocab` say what it was built with)."""
    from pixword_lit.infer.export import load_module

    return load_module(path).model.eval()


def load_run(path, tokenizer: str | None = None, words: bool = True):
    """A checkpoint or export folder -> `Run`: the model (eval), config, vocabulary, word
    tokenizer and the image builder (`run.text(str)`, `run.image(png_bytes, name)` make prompt
    elements for `pixword_lit.infer.generate.generate`). words=False: image-only models too."""
    from pixword_lit.infer.load import load_run as load

    return load(str(path), tokenizer, words)


def read_image(path):
    """Any image file -> the 8-bit RGB PNG bytes `run.image` takes (as `pixword prep` stores them)."""
    from pixword_lit.infer.load import read_image as read

    return read(path)


def export(checkpoint, out, overwrite: bool = False):
    """`pixword export`: a checkpoint -> folder `out` with model.safetensors, config.yaml,
    tokenizer.json and pixword.json, which `load_model`, `load_run` and the CLI accept."""
    from pixword_lit.infer.export import export as write
    from pixword_lit.provenance import git_commit

    return write(checkpoint, out, overwrite, git_commit())
