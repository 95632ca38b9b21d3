"""Checkpoint files: reading them safely, finding the one to resume, checking that a run's
settings fit it, and converting sharded fsdp folders to one file.

Checkpoints travel (shared, copied between clusters, downloaded), so nothing here unpickles
arbitrary objects:

- every `torch.load` uses `weights_only=True`: tensors and plain data only. pixword and
  Lightning store nothing else (hyper-parameters are a plain dict, the RNG states plain lists,
  see `PixWordLit.on_save_checkpoint`; callback, loop, optimizer, scheduler and grad scaler
  states are dicts of numbers, strings and tensors), so `SAFE_GLOBALS` is empty;
- the shard index of an fsdp folder (`.metadata`, a plain pickle written by
  torch.distributed.checkpoint) is read by an unpickler that only knows the classes of that
  index, and the non-tensor items inside the rank files (`__R_0.distcp`) go through
  `torch.load(weights_only=True)` too (torch's own reader unpickles them unrestricted).

A checkpoint that is missing, truncated, not a checkpoint, or holds anything else raises
`CheckpointError`: one line naming the file and why, shown by the CLI as such.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import sys
import zipfile
from pathlib import Path

import torch

from pixword_lit.errors import CheckpointError  # noqa: F401  (raised here; imported from here too)

METADATA = "meta.pt"  # Lightning's name for the non-tensor part of a sharded checkpoint
DCP_INDEX = ".metadata"  # torch.distributed.checkpoint's shard index
SINGLE_SUFFIX = "-single.ckpt"  # converted copies: weights without optimizer state, not resumable

# Types beyond torch's weights_only defaults that pixword or Lightning store: none (see above).
SAFE_GLOBALS: list = []



# ---- reading one file -----------------------------------------------------------------------
def safe_load(path: Path | str, map_location="cpu", mmap: bool = False) -> dict:
    """torch.load with weights_only=True; any failure -> CheckpointError naming the file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.is_dir():
        raise CheckpointError(f"{path}: a folder (a sharded fsdp checkpoint?), expected a file; "
                              "resume it with trainer.strategy=fsdp or convert it with "
                              "`pixword convert-ckpt`")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(4)
        what = ("truncated or damaged (its zip directory is missing)" if head == b"PK\x03\x04"
                else "not a checkpoint (torch.save writes zip files; this is not one)")
        raise CheckpointError(f"{path}: {what}")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise CheckpointError(_refused(path, str(e))) from e
    except Exception as e:  # zip members cut short, bad records, ...
        raise CheckpointError(f"{path}: unreadable, truncated or damaged ({_first_line(e)})") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a Lightning checkpoint (holds a {type(obj).__name__})")
    return obj


def _refused(path, message: str) -> str:
    m = re.search(r"GLOBAL (\S+)", message)
    what = f"a reference to {m.group(1)}" if m else "pickled objects"
    return (f"{path}: refused: it holds {what}, not only tensors and plain data as pixword "
            "checkpoints do; it was not loaded and nothing in it ran (use checkpoints only from "
            "sources you trust)")


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return re.split(r"(?<=\.)\s", text.splitlines()[0])[0][:200]  # the first sentence


# ---- sharded fsdp folders -------------------------------------------------------------------
class _DcpIndexUnpickler(pickle.Unpickler):
    """Unpickles torch.distributed.checkpoint's `.metadata` and nothing else."""

    ALLOWED = {
        ("torch.distributed.checkpoint.metadata", n) for n in (
            "Metadata", "MetadataIndex", "BytesStorageMetadata", "ChunkStorageMetadata",
            "TensorProperties", "TensorStorageMetadata", "StorageMeta", "_MEM_FORMAT_ENCODING")
    } | {
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),  # torch.layout by name (a dict lookup)
        ("collections", "OrderedDict"),
        ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"),
        ("pathlib", "PurePosixPath"), ("pathlib", "PureWindowsPath"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED or (
            module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"GLOBAL {module}.{name} is not allowed")


def read_dcp_index(folder: Path, name: str = DCP_INDEX):
    """The shard index (`.metadata`) of a sharded checkpoint folder, read safely."""
    from torch.distributed.checkpoint.metadata import Metadata

    path = folder / name
    try:
        with open(path, "rb") as f:
            md = _DcpIndexUnpickler(f).load()
    except pickle.UnpicklingError as e:
        if "GLOBAL" in str(e):
            raise CheckpointError(_refused(path, str(e))) from e
        raise CheckpointError(f"{path}: unreadable, truncated or damaged ({_first_line(e)})") from e
    except Exception as e:
        raise CheckpointError(f"{path}: unreadable, truncated or damaged ({_first_line(e)})") from e
    if not isinstance(md, Metadata):
        raise CheckpointError(f"{path}: not a torch.distributed.checkpoint index")
    return md


def check_sharded(folder: Path) -> dict:
    """Everything a sharded folder needs before loading: Lightning's meta.pt (returned), the
    shard index, and every rank file the index names, present and long enough."""
    for name, what in ((METADATA, "Lightning's training state"), (DCP_INDEX, "the shard index")):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder}: sharded checkpoint without {name} ({what})")
    meta = safe_load(folder / METADATA, mmap=True)
    md = read_dcp_index(folder)
    need: dict[str, int] = {}
    for info in (md.storage_data or {}).values():
        need[info.relative_path] = max(need.get(info.relative_path, 0), info.offset + info.length)
    for rel, size in sorted(need.items()):
        f = folder / rel
        if Path(rel).name != rel or rel in (".", ".."):  # rank files live in the folder itself
            raise CheckpointError(f"{folder}: refused: the shard index points outside the folder ({rel})")
        if not f.is_file():
            raise CheckpointError(f"{folder}: rank file {rel} is missing")
        if f.stat().st_size < size:
            raise CheckpointError(
                f"{folder}: rank file {rel} is truncated ({f.stat().st_size} of {size} bytes)")
    return meta


def _safe_bytes_planner(base):
    """A load planner whose non-tensor items go through torch.load(weights_only=True)."""

    class SafeBytes(base):
        def load_bytes(self, read_item, value: io.BytesIO) -> None:
            from torch.distributed.checkpoint._traverse import set_element

            try:
                with torch.serialization.safe_globals(SAFE_GLOBALS):
                    obj = torch.load(value, weights_only=True)
            except pickle.UnpicklingError as e:
                raise CheckpointError(_refused(f"item {read_item.dest_index.fqn}", str(e))) from e
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
            else:
                self.state_dict[read_item.dest_index.fqn] = obj

    return SafeBytes


def _safe_reader(folder: Path):
    """torch's FileSystemReader, reading the shard index with `read_dcp_index`."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeFileSystemReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            md = read_dcp_index(folder, Path(self._get_metadata_path(kwargs.get("rank"))).name)
            if getattr(md, "storage_meta", None) is None:
                md.storage_meta = StorageMeta()
            md.storage_meta.load_id = self.load_id
            return md

    return SafeFileSystemReader(folder)


def _dcp_failure(folder: Path, e: Exception) -> CheckpointError:
    """torch.distributed.checkpoint wraps each rank's exception; find ours, else describe."""
    seen, stack, inner = set(), [e], e
    while stack:
        x = stack.pop()
        if id(x) in seen or x is None:
            continue
        seen.add(id(x))
        if isinstance(x, CheckpointError):
            return CheckpointError(f"{folder}: {x}")
        stack += [x.__cause__, x.__context__]
        for f in (getattr(x, "failures", None) or {}).values():  # rank -> (exception, traceback)
            ys = [y for y in (f if isinstance(f, tuple) else (f,)) if isinstance(y, BaseException)]
            inner = ys[0] if ys and inner is e else inner
            stack += ys
    return CheckpointError(f"{folder}: unreadable, truncated or damaged ({_first_line(inner)})")


def safe_dcp_load(state: dict, path, **kwargs) -> None:
    """Drop-in for Lightning's `_distributed_checkpoint_load`: torch.distributed.checkpoint.load
    with the safe index reader and the weights_only planner."""
    from torch.distributed.checkpoint import load
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    folder = Path(path)
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

    try:
        load(state, storage_reader=_safe_reader(folder),
             planner=_safe_bytes_planner(DefaultLoadPlanner)(), **kwargs)
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as e:
        raise _dcp_failure(folder, e) from e


def single_file_checkpoint(path: Path, out: Path | None = None) -> Path:
    """A sharded fsdp checkpoint folder -> one .ckpt file loadable by a single process
    (model weights and training state; the sharded optimizer state is left out)."""
    path = Path(path)
    if not path.is_dir():
        safe_load(path, mmap=True)  # refuse a bad file here too, before saying what it is
        raise CheckpointError(f"{path}: already a single-file checkpoint; convert-ckpt takes a "
                              "sharded fsdp checkpoint folder")
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    meta = check_sharded(path)
    out = Path(out) if out else path.with_name(path.stem + SINGLE_SUFFIX)
    tmp = out.with_name(out.name + ".tmp")
    state: dict = {}
    try:
        # as torch's dcp_to_torch_save does (`load` would fill a copy of `state`)
        _load_state_dict(state, storage_reader=_safe_reader(path), no_dist=True,
                         planner=_safe_bytes_planner(_EmptyStateDictLoadPlanner)(keys={"state_dict"}))
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as e:  # torch's wrapper is a BaseException
        raise _dcp_failure(path, e) from e
    state.update(meta)
    # optimizer shards are dropped: the single file is for validation or fresh fine-tuning
    state = {k: v for k, v in state.items() if not k.startswith("optimizer_")}
    torch.save(state, tmp)
    os.replace(tmp, out)
    return out


# ---- discovery for --resume -----------------------------------------------------------------
def is_complete(path: Path) -> bool:
    """A checkpoint that `--resume` may use: fully written and holding the training state."""
    if not _is_candidate(path):
        return False
    if path.is_dir():
        return (path / METADATA).exists() and (path / DCP_INDEX).exists()
    return path.is_file()


def _is_candidate(path: Path) -> bool:
    """Named like a resumable checkpoint (not a write in progress, an old copy or a converted
    single file); whether it is readable is `read_meta`'s question."""
    if path.name.endswith((".tmp", ".old", SINGLE_SUFFIX)):
        return False
    return path.is_dir() or path.suffix == ".ckpt"


def read_meta(path: Path) -> dict:
    """The training state of a checkpoint (file or sharded folder), read safely; a folder is
    also checked for a missing or short rank file. Raises CheckpointError."""
    path = Path(path)
    if path.is_dir():
        return check_sharded(path)
    return safe_load(path, mmap=True)


def checkpoint_step(path: Path) -> int:
    return int(read_meta(Path(path)).get("global_step", 0))


def find_resume_checkpoint(run_dir: Path, resume: str) -> str:
    """`last` -> the newest readable checkpoint in run_dir/checkpoints (unreadable ones are
    skipped, saying which and why); else the given path, which must be readable."""
    if resume != "last":
        p = Path(resume)
        if p.exists() and not _is_candidate(p):
            why = ("a converted copy without optimizer state" if p.name.endswith(SINGLE_SUFFIX)
                   else "a write cut short or an old copy, not a checkpoint to resume")
            raise CheckpointError(f"--resume: {p} is {why}")
        read_meta(p)  # missing, damaged or refused -> CheckpointError naming it
        return str(p)
    ckpt_dir = Path(run_dir) / "checkpoints"
    found = sorted(p for p in ckpt_dir.iterdir() if _is_candidate(p)) if ckpt_dir.exists() else []
    readable, skipped = [], 0
    for p in found:
        try:
            readable.append((int(read_meta(p).get("global_step", 0)), p.stat().st_mtime, p))
        except CheckpointError as e:
            skipped += 1
            print(f"pixword: skipping {e}", file=sys.stderr, flush=True)
    if not readable:
        why = (f"{skipped} unreadable, see above; start the run again with --overwrite"
               if skipped else "none there; run without --resume to start it")
        raise CheckpointError(f"--resume last: no readable checkpoint in {ckpt_dir} ({why})")
    step, _, newest = max(readable)
    print(f"pixword: resuming from {newest} (step {step})", flush=True)
    return str(newest)


# ---- what a checkpoint says it is -----------------------------------------------------------
def saved_hparams(path: Path, meta: dict | None = None) -> dict:
    meta = read_meta(path) if meta is None else meta
    hp = meta.get("hyper_parameters")
    if not (isinstance(hp, dict) and isinstance(hp.get("config"), dict)
            and {"n_words", "folding_state"} <= set(hp)):
        raise CheckpointError(f"{path}: not a pixword checkpoint (no stored config, vocabulary "
                              "size and folding)")
    return hp
