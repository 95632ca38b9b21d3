"""Typed config schema and loading: schema <- base.yaml <- experiment <- CLI dotlist.

Every YAML key must exist in these dataclasses, so a misspelled key fails at load time with
OmegaConf's message naming it. Component mappings (`model.folding`, `model.attention`,
`model.embedding`) are checked against their registry's params dataclass in `validate`.
Derived values (vocabulary sizes, number of windows) are computed, never written in YAML.
"""

from __future__ import annotations

import copy
import functools
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from pixword_lit.data.elements import RESAMPLE
from pixword_lit.errors import ConfigError  # noqa: F401  (raised here; imported from here by callers)
from pixword_lit.model.components import validate_components
from pixword_lit.provenance import REPO_ROOT

BASE_YAML = REPO_ROOT / "experiments" / "base.yaml"


# The `debug` model (torchtitan's `debugmodel`): every part of the architecture at a few
# thousand parameters, for tests and smoke runs; every test builds its models from it (some
# change the image geometry or the folding their hand-made batches need)
DEBUG_MODEL = [
    "model.dim=32", "model.n_heads=4", "model.n_kv_heads=2", "model.image_layers=1",
    "model.decoder_layers=2", "model.image_size=16", "model.window_size=4",
    "model.folding.factor=64",
]


@dataclass
class RopeScaling:
    factor: float = 8.0  # LLaMA-3.1 frequency scaling (spec section 4)
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_context: int = 8192


@dataclass
class ModelConfig:
    dim: int = 768
    n_heads: int = 12
    n_kv_heads: int = 6
    image_layers: int = 5
    decoder_layers: int = 12
    image_size: int = 224  # S: longer image side after resize, pixels
    window_size: int = 16  # w: side of a square window; S % w == 0
    vocab_size: Optional[int] = None  # word vocabulary V; null = 6 (image_only) or tokenizer size
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_scaling: Optional[RopeScaling] = field(default_factory=RopeScaling)
    ffn_multiple_of: int = 128
    folding: dict = field(default_factory=lambda: {"name": "uniform", "factor": 16})
    attention: dict = field(default_factory=lambda: {"name": "global_conditional"})
    embedding: dict = field(default_factory=lambda: {"name": "pix_table"})
    objective: dict = field(default_factory=lambda: {"name": "first_pixel"})
    # weight of pixel targets in the training loss (word targets weigh 1): the loss is the
    # weighted mean; 1 = the paper's plain mean, 0 = word targets only (the image as context).
    # Validation's val/loss stays the plain mean, comparable across weights.
    pix_weight: float = 1.0
    init: str = "normal"  # normal: N(0, 0.02) everywhere | paper: the authors' (see model/pixword.py)
    compile: bool = False  # torch.compile each transformer block (model/pixword.py); same weights and keys


@dataclass
class DataConfig:
    train: str = ""  # shard URLs: a folder with index.json, a brace pattern, a pipe: command
    val: str = ""
    train_index: Optional[str] = None  # index.json; default: beside the shards
    val_index: Optional[str] = None
    mode: str = "image_only"  # image_only | mixed
    tokenizer: Optional[str] = None  # tokenizer.json; default: the one index.json points to
    max_seq_len: int = 1024  # decoder inputs per sample; an image counts as its windows
    batch_size: int = 2  # per process
    # units per optimizer step over all processes; null = processes x batch_size x
    # trainer.accumulate_grad_batches, else it sets accumulate_grad_batches (system/resume.py)
    global_batch_size: Optional[int] = None
    num_workers: int = 2
    small_images: str = "upscale"  # upscale | skip: images whose both sides are below S
    resample: str = "bicubic"  # nearest | bilinear | bilinear_antialias | bicubic | lanczos | box
    short_side_rounding: str = "floor"  # floor: int(S * short / long) | authors: int(short / long * S)
    # true: the loader's resize must be the only one; shards whose index.json says prep
    # resized images (--max-side) are refused before training (the authors resize once)
    single_resize: bool = False
    # mixed: what an image the loader skips (small_images: skip) leaves: drop (nothing) |
    # keep (its <|image|> <|/image|> as two scored word tokens, as the authors' parser)
    skipped_image_tags: str = "drop"
    shuffle: bool = True
    val_limit: Optional[int] = None  # use only the first N validation units


@dataclass
class OptimConfig:
    lr: float = 6e-4
    weight_decay: float = 0.01
    betas: list = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    decay_norms: bool = False  # also decay 1-D weights (norms), as the authors decay every parameter
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # cosine decays to min_lr_ratio * lr
    decay_steps: Optional[int] = None  # null = trainer.max_steps (-1: the steps of max_epochs)


@dataclass
class TrainerConfig:
    """Keys are Lightning Trainer arguments of the same names."""

    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | fsdp
    precision: str = "32-true"  # 32-true | bf16-mixed | 16-mixed
    max_steps: int = 1000
    max_epochs: int = -1
    val_check_interval: Optional[Any] = None
    check_val_every_n_epoch: Optional[int] = 1
    limit_val_batches: Optional[Any] = None
    log_every_n_steps: int = 10
    gradient_clip_val: Optional[float] = 1.0
    accumulate_grad_batches: int = 1
    enable_progress_bar: bool = True
    num_sanity_val_steps: int = 0
    deterministic: bool = False
    default_root_dir: str = "runs"


@dataclass
class RunConfig:
    name: str = "run"
    dir: Optional[str] = None  # null = trainer.default_root_dir/name
    seed: int = 2026
    ckpt_every_n_steps: Optional[int] = None  # periodic checkpoints besides last and best
    pictures: int = 4  # validation images drawn in the prediction picture
    # units per point of train/loss_per_{N}_images (the authors log the mean loss per 1,000 files)
    loss_block_images: int = 1000
    # signals that make a run stop at the next optimizer step with a checkpoint (preemption)
    preempt_signals: list = field(default_factory=lambda: ["SIGUSR1", "SIGTERM"])


@dataclass
class EvalConfig:
    """Evaluation by generation after training (`pixword eval captions`, see infer/captions.py)."""

    captions: bool = False  # after fit: greedy answers on data.val -> RUN/eval, eval/* in summary
    prefix: str = 'The text says "'  # prompt text after the last image, shared by all answers
    end: str = '"'  # answers are cut at this marker ('' = the whole continuation)
    limit: Optional[int] = None  # only the first N validation documents


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    run: RunConfig = field(default_factory=RunConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> DictConfig:
    """schema <- base.yaml <- `path` (with its `defaults:` chain) <- dotted overrides; validated."""
    try:
        cfg = _schema_and_base()
        for layer in _yaml_chain(Path(path)) if path is not None else []:
            cfg = _merge(cfg, _read_yaml(layer))
        if overrides:
            bad = [o for o in overrides if "=" not in o]
            if bad:
                raise ConfigError(f"override {bad[0]!r} is not of the form key=value")
            cfg = _merge(cfg, OmegaConf.from_dotlist([_component_by_name(o) for o in overrides]))
    except ConfigError:
        raise
    except Exception as e:  # OmegaConf names the key and the file position
        raise ConfigError(_one_line(e)) from None
    if path is not None and cfg.run.name == "run":
        cfg.run.name = Path(path).stem
    validate(cfg)
    return cfg


def _schema_and_base() -> DictConfig:
    """A copy of schema <- base.yaml, made once per version of base.yaml: the first two layers
    of every config, ~2/3 of the time of a load (a grid checks every cell's config)."""
    st = BASE_YAML.stat() if BASE_YAML.exists() else None
    return copy.deepcopy(_schema_and_base_of(st and (st.st_mtime_ns, st.st_size)))


@functools.lru_cache(maxsize=2)
def _schema_and_base_of(version) -> DictConfig:
    cfg = OmegaConf.structured(Config)
    return _merge(cfg, _read_yaml(BASE_YAML)) if version is not None else cfg


COMPONENT_KEYS = tuple(f"model.{f}" for f in ("folding", "attention", "embedding", "objective"))


def _component_by_name(override: str) -> str:
    """`model.attention=full_causal` (a component by its name alone, as a user types it) is
    `model.attention.name=full_causal`: that component with its defaults."""
    key, value = override.split("=", 1)
    if key.strip() in COMPONENT_KEYS and value.strip() and value.strip()[0] not in "{[":
        return f"{key.strip()}.name={value}"
    return override


def _one_line(e: Exception) -> str:
    """OmegaConf's and YAML's multi-line messages as one line that starts with the key."""
    key = getattr(e, "full_key", None)
    msg = getattr(e, "msg", None) if key else None
    lines = [line.strip() for line in str(msg or e).splitlines()]
    noise = ("full_key:", "reference_type=", "object_type=")  # repeated in every OmegaConf message
    text = " ".join(x for x in lines if x and not x.startswith(noise))
    return f"{key}: {text}" if key else text


def _merge(cfg: DictConfig, layer: DictConfig) -> DictConfig:
    """Merge one layer; a component whose name changes starts from that component's defaults
    (so `model.folding.name=palette` does not inherit the uniform folding's `factor`)."""
    for family in ("folding", "attention", "embedding", "objective"):
        name = OmegaConf.select(layer, f"model.{family}.name", default=None)
        if name is not None and name != cfg.model[family].get("name"):
            cfg.model[family] = {"name": name}
    return OmegaConf.merge(cfg, layer)


def _read_yaml(path: Path) -> DictConfig:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    raw = OmegaConf.load(path)
    raw.pop("defaults", None)
    return raw


def _yaml_chain(path: Path) -> list[Path]:
    """Follow `defaults: [other.yaml]` (relative to the file) so experiments hold only deltas."""
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    parents = OmegaConf.load(path).get("defaults") or []
    chain: list[Path] = []
    for p in parents:
        parent = (path.parent / str(p)).resolve()
        if parent != BASE_YAML.resolve():
            chain += _yaml_chain(parent)
    return chain + [path]


def validate(cfg: DictConfig) -> None:
    """Checks that need more than types; each error names the key. Reads no data."""
    m, d, t = cfg.model, cfg.data, cfg.trainer
    _check(m.image_size > 0, "model.image_size", f"must be positive, got {m.image_size}")
    _check(m.window_size > 0, "model.window_size", f"must be positive, got {m.window_size}")
    _check(
        m.image_size % m.window_size == 0,
        "model.window_size",
        f"{m.window_size} does not divide model.image_size {m.image_size}",
    )
    _check(m.dim % m.n_heads == 0, "model.dim", f"{m.dim} is not divisible by n_heads {m.n_heads}")
    _check(
        m.n_heads % m.n_kv_heads == 0,
        "model.n_kv_heads",
        f"{m.n_kv_heads} does not divide n_heads {m.n_heads}",
    )
    _check((m.dim // m.n_heads) % 2 == 0, "model.dim", "head size dim/n_heads must be even (RoPE)")
    _check(d.mode in ("image_only", "mixed"), "data.mode", f"must be image_only or mixed, got {d.mode!r}")
    _check(d.small_images in ("upscale", "skip"), "data.small_images", f"got {d.small_images!r}")
    names = ", ".join(RESAMPLE)
    _check(d.resample in RESAMPLE, "data.resample", f"got {d.resample!r}; one of {names}")
    _check(
        d.short_side_rounding in ("floor", "authors"),
        "data.short_side_rounding",
        f"must be floor or authors, got {d.short_side_rounding!r}",
    )
    _check(d.skipped_image_tags in ("drop", "keep"), "data.skipped_image_tags",
           f"must be drop or keep, got {d.skipped_image_tags!r}")
    _check(m.pix_weight >= 0, "model.pix_weight", f"must be >= 0, got {m.pix_weight}")
    _check(m.pix_weight > 0 or d.mode == "mixed", "model.pix_weight",
           "0 leaves an image_only run nothing to train (it has no word targets)")
    _check(m.init in ("normal", "paper"), "model.init", f"must be normal or paper, got {m.init!r}")
    _check(d.batch_size >= 1, "data.batch_size", "must be >= 1")
    n_windows = (m.image_size // m.window_size) ** 2
    _check(
        d.max_seq_len >= n_windows + 3,
        "data.max_seq_len",
        f"{d.max_seq_len} cannot hold one image of {n_windows} windows plus <s> <|image|> <|/image|>",
    )
    _check(t.strategy in ("auto", "ddp", "fsdp", "ddp_spawn"), "trainer.strategy", f"got {t.strategy!r}")
    _check(
        t.precision in ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true"),
        "trainer.precision",
        f"got {t.precision!r}",
    )
    _check(not cfg.eval.captions or d.mode == "mixed", "eval.captions",
           "needs data.mode mixed (an image-only model has no words to answer with)")
    _check(
        t.max_steps > 0 or t.max_epochs > 0,
        "trainer.max_steps",
        f"is {t.max_steps} and max_epochs {t.max_epochs}: set max_steps > 0, or max_epochs >= 1 "
        "(max_steps -1: the epochs decide the length)",
    )
    _check(cfg.optim.lr > 0, "optim.lr", "must be positive")
    _check(cfg.run.loss_block_images >= 1, "run.loss_block_images", "must be >= 1")
    for name in cfg.run.preempt_signals:
        _check(
            str(name) in signal.Signals.__members__ and name not in ("SIGKILL", "SIGSTOP"),
            "run.preempt_signals",
            f"{name!r} is not a signal a process can catch (e.g. SIGUSR1, SIGTERM, SIGINT)",
        )
    _check(0.0 <= cfg.optim.min_lr_ratio <= 1.0, "optim.min_lr_ratio", "must be in [0, 1]")
    validate_components(cfg)


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {msg}")


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def flatten(d: dict | None, prefix: str = "") -> dict:
    """A nested (config) dict as {"dotted.key": value}; lists become tuples (comparable)."""
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out
