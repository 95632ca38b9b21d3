"""From a validated config to the objects of a run: shards, tokenizer, vocabulary, folding,
sample builder, data module and LightningModule. Shared by fit, validate, inspect and tests.
Lightning is loaded only for the last two: a model built alone (`pixword_lit.build_model`, the
benchmarks' bare step, each `bench ab` arm a fresh process) starts ~4 s sooner without it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from pixword_lit.data.shards import ShardSet, prep_resize_problem, resolve_shards
from pixword_lit.data.stream import SampleBuilder, palette_pixels
from pixword_lit.files import atomic_write
from pixword_lit.model.components import component_params
from pixword_lit.model.components.folding import (
    PaletteFolding,
    UniformFolding,
    fit_palette,
    folding_from_state,
)
from pixword_lit.model.tokens import N_SPECIAL, Vocab, special_tokens_problem
from pixword_lit.system.config import ConfigError

if TYPE_CHECKING:
    from pixword_lit.data.module import PixDataModule
    from pixword_lit.system.lit_module import PixWordLit


def load_tokenizer(cfg: DictConfig, train: ShardSet | None):
    """The word tokenizer of a mixed run: data.tokenizer, else the one index.json names."""
    if cfg.data.mode != "mixed":
        return None
    path = cfg.data.tokenizer
    if path is None and train is not None and train.index.get("tokenizer"):
        path = str(Path(train.index_path).parent / train.index["tokenizer"])
    if path is None or not Path(path).exists():
        raise ConfigError(f"data.tokenizer: mixed mode needs a tokenizer.json (got {path!r})")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    problem = special_tokens_problem(tok)
    if problem:
        raise ConfigError(f"data.tokenizer: {path} {problem}")
    return tok


def word_vocab_size(cfg: DictConfig, tokenizer) -> int:
    if tokenizer is None:
        return cfg.model.vocab_size or N_SPECIAL
    n = tokenizer.get_vocab_size()
    if cfg.model.vocab_size is not None and cfg.model.vocab_size < n:
        raise ConfigError(f"model.vocab_size: {cfg.model.vocab_size} < tokenizer size {n}")
    return cfg.model.vocab_size or n


def make_folding(cfg: DictConfig, train: ShardSet | None, run_dir: Path | None):
    """Uniform folding is its factor; a palette is fitted once on training pixels and kept in
    the run folder (and, as the folding's `state()`, in checkpoints), so validation and
    resumed runs use the same one."""
    name, params = component_params("folding", cfg.model.folding)
    if name == "uniform":
        return UniformFolding(params.factor)
    saved = run_dir / "palette.json" if run_dir is not None else None
    if saved is not None and saved.exists():
        return PaletteFolding(json.loads(saved.read_text()))
    if train is None:
        raise ConfigError("model.folding: a palette needs training shards to be fitted on")
    tmp_builder = SampleBuilder(cfg.model, cfg.data, Vocab(N_SPECIAL, 1), None)
    pixels = palette_pixels(train, tmp_builder, params.sample_pixels, cfg.run.seed)
    folding = PaletteFolding(fit_palette(pixels, params.colors, params.iters, cfg.run.seed))
    if saved is not None:  # atomic: under torchrun/SLURM every rank may fit (identically)
        atomic_write(saved, json.dumps(folding.state()["palette"]), per_process=True)
    return folding


@dataclass
class RunParts:
    cfg: DictConfig
    train: ShardSet
    val: ShardSet
    tokenizer: object
    vocab: Vocab
    folding: UniformFolding | PaletteFolding
    builder: SampleBuilder

    @property
    def folding_state(self) -> dict:
        """What checkpoints keep of the folding (`FOLDINGS[name].from_state` rebuilds it)."""
        return self.folding.state()


def build_parts(cfg: DictConfig, run_dir: Path | None, folding_state: dict | None = None) -> RunParts:
    d = cfg.data
    train = resolve_shards(d.train, d.train_index, d.mode, "data.train")
    val = resolve_shards(d.val, d.val_index, d.mode, "data.val")
    if d.get("single_resize"):  # the authors resize once, at load: refuse pre-resized shards
        for shards, key in ((train, "data.train"), (val, "data.val")):
            problem = prep_resize_problem(shards, key)
            if problem:
                raise ConfigError(problem)
    tokenizer = load_tokenizer(cfg, train)
    n_words = word_vocab_size(cfg, tokenizer)
    if folding_state is not None:
        folding = folding_from_state(folding_state)
    else:
        folding = make_folding(cfg, train, run_dir)
    vocab = Vocab(n_words, folding.n_pix)
    builder = SampleBuilder(cfg.model, d, vocab, folding, tokenizer)
    return RunParts(cfg, train, val, tokenizer, vocab, folding, builder)


def build_module(parts: RunParts) -> PixWordLit:
    from pixword_lit.system.lit_module import PixWordLit

    config = OmegaConf.to_container(parts.cfg, resolve=True)
    tokenizer = parts.tokenizer.to_str() if parts.tokenizer is not None else None
    return PixWordLit(config, parts.vocab.n_words, parts.folding_state, tokenizer)


def build_datamodule(parts: RunParts) -> PixDataModule:
    from pixword_lit.data.module import PixDataModule

    return PixDataModule(parts.cfg, parts.builder, parts.train, parts.val)
