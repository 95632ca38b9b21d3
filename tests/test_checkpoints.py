"""Checkpoints from elsewhere: code-execution payloads refused, damaged files skipped or named
in one line, settings that do not fit a checkpoint refused before any weights load.

Two tiny runs are made once (a single-file one and a one-process fsdp one, whose checkpoints
are sharded folders); each test works on copies.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from omegaconf import OmegaConf

from pixword_lit.cli import main
from pixword_lit.fit.train import fit
from pixword_lit.system import checkpoints, resume
from pixword_lit.system.checkpoints import CheckpointError

SHORT = ["trainer.val_check_interval=2", "data.val_limit=4", "run.pictures=0"]


class Payload:
    """Unpickling this runs a shell command (what a hostile checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def single_run(glyph_shards, tmp_path_factory):
    """A finished run: config file, run folder with last (step 4), best, step 2 and step 4."""
    root = tmp_path_factory.mktemp("single")
    cfg = tiny_config(glyph_shards, root, "trainer.max_steps=4", "run.ckpt_every_n_steps=2", *SHORT)
    fit(cfg)
    OmegaConf.save(cfg, root / "cfg.yaml")
    return root / "cfg.yaml", root / "run"


@pytest.fixture(scope="module")
def fsdp_run(glyph_shards, tmp_path_factory):
    """fsdp on one process: its last.ckpt and best.ckpt are sharded folders."""
    root = tmp_path_factory.mktemp("fsdp")
    cfg = tiny_config(glyph_shards, root, "trainer.max_steps=2", "trainer.strategy=fsdp", *SHORT)
    with in_process_fsdp():
        fit(cfg)
    OmegaConf.save(cfg, root / "cfg.yaml")
    return root / "cfg.yaml", root / "run"


@contextmanager
def in_process_fsdp():
    """fsdp in the test process sets MASTER_PORT etc. and keeps a process group listening on
    that port: undo both, or later multi-process runs inherit a port in use."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        os.environ.clear()
        os.environ.update(saved)


def copy_run(run: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "run"
    shutil.copytree(run, dest)
    return dest


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str, cmd: str) -> str:
    lines = [x for x in err.splitlines() if x.startswith(f"pixword {cmd}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def with_payload(good: Path, dest: Path, marker: Path) -> Path:
    ckpt = torch.load(good, weights_only=True)
    ckpt["extra"] = Payload(marker)  # one extra entry, as in the issue
    torch.save(ckpt, dest)
    return dest


# ---- code execution -------------------------------------------------------------------------
def test_payload_refused_by_resume_validate_and_convert(single_run, tmp_path, capsys):
    cfg, run = single_run
    marker = tmp_path / "PWNED"
    evil = with_payload(run / "checkpoints" / "last.ckpt", tmp_path / "evil.ckpt", marker)
    # the file alone: fit --resume PATH, validate, convert-ckpt
    copy = copy_run(run, tmp_path)
    for argv in (["fit", cfg, f"run.dir={copy}", "--resume", evil], ["validate", evil],
                 ["convert-ckpt", evil]):
        code, _, err = cli(capsys, *argv)
        line = error_line(err, argv[0])
        assert code == 2 and f"{evil}: refused" in line and "posix.system" in line, err
        assert "Traceback" not in err
    # --resume last with it as the only checkpoint of the run
    for p in (copy / "checkpoints").iterdir():
        p.unlink()
    shutil.copy(evil, copy / "checkpoints" / "last.ckpt")
    code, _, err = cli(capsys, "fit", cfg, f"run.dir={copy}", "--resume", "last")
    assert code == 2 and "no readable checkpoint" in error_line(err, "fit")
    assert f"skipping {copy / 'checkpoints' / 'last.ckpt'}: refused" in err
    assert not marker.exists()
    # the payload is live: plain unpickling runs it (so the checks above can tell)
    import pickle

    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


def test_payload_in_a_sharded_folder_refused(fsdp_run, tmp_path, capsys):
    cfg, run = fsdp_run
    marker = tmp_path / "PWNED"
    good = run / "checkpoints" / "last.ckpt"
    # 1. Lightning's meta.pt
    bad_meta = tmp_path / "bad_meta.ckpt"
    shutil.copytree(good, bad_meta)
    with_payload(good / checkpoints.METADATA, bad_meta / checkpoints.METADATA, marker)
    # 2. the shard index (.metadata), a plain pickle in torch's format
    bad_index = tmp_path / "bad_index.ckpt"
    shutil.copytree(good, bad_index)
    import pickle

    (bad_index / checkpoints.DCP_INDEX).write_bytes(pickle.dumps(Payload(marker)))
    for folder, where in ((bad_meta, bad_meta / "meta.pt"), (bad_index, bad_index / ".metadata")):
        for argv in (["fit", cfg, f"run.dir={tmp_path}/r", "--resume", folder],
                     ["validate", folder], ["convert-ckpt", folder]):
            code, _, err = cli(capsys, *argv)
            line = error_line(err, argv[0])
            assert code == 2 and f"{where}: refused" in line and "system" in line, err
    assert not marker.exists()


def test_payload_inside_a_rank_file_refused(tmp_path):
    """A non-tensor item of a rank file: torch's reader would torch.load it unrestricted."""
    import torch.distributed.checkpoint as dcp

    folder = tmp_path / "evil.ckpt"
    marker = tmp_path / "PWNED"
    dcp.save({"state_dict": {"w": torch.ones(2), "x": Payload(marker)}},
             storage_writer=dcp.FileSystemWriter(folder), no_dist=True)
    torch.save({"global_step": 1}, folder / checkpoints.METADATA)
    with pytest.raises(CheckpointError, match=r"refused.*posix\.system"):
        checkpoints.single_file_checkpoint(folder, tmp_path / "out.ckpt")
    state = {"state_dict": {"w": torch.zeros(2), "x": None}}
    with pytest.raises(CheckpointError, match=r"evil\.ckpt.*refused"):
        checkpoints.safe_dcp_load(state, folder, no_dist=True)
    assert not marker.exists() and not (tmp_path / "out.ckpt").exists()


def test_checkpoints_hold_only_plain_types(single_run, fsdp_run):
    """SAFE_GLOBALS is empty because real checkpoints need nothing beyond torch's defaults."""
    plain = (dict, list, tuple, str, int, float, bool, type(None), torch.Tensor)

    def walk(x):
        assert isinstance(x, plain), type(x)
        if isinstance(x, dict):
            for k, v in x.items():
                walk(k)
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    assert checkpoints.SAFE_GLOBALS == []
    walk(checkpoints.safe_load(single_run[1] / "checkpoints" / "last.ckpt"))
    sharded = fsdp_run[1] / "checkpoints" / "last.ckpt"
    walk(checkpoints.check_sharded(sharded))
    assert checkpoints.read_dcp_index(sharded).storage_data


# ---- damaged checkpoints and the CLI's error path -------------------------------------------
def test_bad_paths_get_one_line_and_debug_shows_traceback(single_run, tmp_path, capsys, monkeypatch):
    _, run = single_run
    data = (run / "checkpoints" / "last.ckpt").read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 3])
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    cases = {tmp_path / "missing.ckpt": "no such file", text: "not a checkpoint",
             truncated: "truncated or damaged"}
    for path, why in cases.items():
        code, _, err = cli(capsys, "validate", path)
        assert code == 2 and f"{path}: {why}" in error_line(err, "validate"), err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(CheckpointError, match="truncated"):
        main(["validate", str(truncated), "--debug"])
    monkeypatch.setenv("PIXWORD_DEBUG", "1")
    with pytest.raises(CheckpointError, match="no such file"):
        main(["validate", str(tmp_path / "missing.ckpt")])


def test_resume_last_skips_unreadable_and_takes_newest_readable(single_run, tmp_path, capsys):
    cfg, run = single_run
    copy = copy_run(run, tmp_path)
    ck = copy / "checkpoints"
    data = (ck / "last.ckpt").read_bytes()
    (ck / "last.ckpt").write_bytes(data[:300_000] if len(data) > 300_000 else data[: len(data) // 2])
    with_payload(run / "checkpoints" / "step0000004.ckpt", ck / "step0000004.ckpt", tmp_path / "PWNED")
    (ck / "best.ckpt").unlink()
    code, out, err = cli(capsys, "fit", cfg, f"run.dir={copy}", "--resume", "last",
                         "trainer.max_steps=5", "data.num_workers=1", "trainer.val_check_interval=5",
                         "trainer.log_every_n_steps=5")  # settings safe to change on resume
    assert code == 0, err
    assert f"skipping {ck / 'last.ckpt'}: truncated or damaged" in err
    assert f"skipping {ck / 'step0000004.ckpt'}: refused" in err
    assert f"resuming from {ck / 'step0000002.ckpt'} (step 2)" in out
    summary = json.loads((copy / "summary.json").read_text())
    assert summary["resumed_from"] == [str(ck / "step0000002.ckpt")] and summary["steps"] == 5
    assert not (tmp_path / "PWNED").exists()


def test_fsdp_folder_resumes_and_validates_through_the_safe_readers(fsdp_run, tmp_path, monkeypatch):
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    from pixword_lit.fit.train import validate

    def unsafe(*a, **k):
        raise AssertionError("torch's unrestricted unpickling was used")

    monkeypatch.setattr(FileSystemReader, "read_metadata", unsafe)  # pickle.load of .metadata
    monkeypatch.setattr(DefaultLoadPlanner, "load_bytes", unsafe)  # unrestricted torch.load of items
    calls = []
    real = checkpoints.safe_dcp_load
    monkeypatch.setattr(checkpoints, "safe_dcp_load", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg, run = fsdp_run
    copy = copy_run(run, tmp_path)
    with in_process_fsdp():
        summary = fit(tiny_config(Path(OmegaConf.load(cfg).data.train).parent, tmp_path,
                                  "trainer.max_steps=3", "trainer.strategy=fsdp", *SHORT), resume="last")
    assert summary["steps"] == 3 and summary["resumed_from"] == [str(copy / "checkpoints" / "last.ckpt")]
    assert calls  # Lightning's sharded load went through the safe reader
    metrics = validate(str(run / "checkpoints" / "last.ckpt"), [])
    assert metrics["val/loss"] > 0


def test_sharded_folder_with_missing_or_damaged_rank_file(fsdp_run, tmp_path, capsys):
    _, run = fsdp_run
    copy = copy_run(run, tmp_path)
    ck = copy / "checkpoints"
    rank_files = sorted((ck / "last.ckpt").glob("*.distcp"))
    assert rank_files
    rank_files[0].unlink()  # last: a rank file missing
    code, _, err = cli(capsys, "validate", ck / "last.ckpt")
    assert code == 2 and f"rank file {rank_files[0].name} is missing" in error_line(err, "validate")
    # --resume last skips it and takes the readable best.ckpt (same step)
    assert checkpoints.find_resume_checkpoint(copy, "last") == str(ck / "best.ckpt")
    assert f"skipping {ck / 'last.ckpt'}: rank file" in capsys.readouterr().err
    # best: a rank file cut short; now nothing is readable
    f = sorted((ck / "best.ckpt").glob("*.distcp"))[0]
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="no readable checkpoint.*2 unreadable"):
        checkpoints.find_resume_checkpoint(copy, "last")
    assert "is truncated (100 of" in capsys.readouterr().err


# ---- settings that do not fit the checkpoint ------------------------------------------------
def test_resume_with_other_shapes_refused_before_loading(single_run, tmp_path, capsys, monkeypatch):
    import pixword_lit.fit.train as train

    cfg, run = single_run
    copy = copy_run(run, tmp_path)

    def must_not_run(*a, **k):
        raise AssertionError("data, model or weights were loaded")

    monkeypatch.setattr(train, "build_parts", must_not_run)
    code, _, err = cli(capsys, "fit", cfg, f"run.dir={copy}", "--resume", "last", "model.dim=64",
                       "model.window_size=8", "model.folding.factor=32", "optim.lr=0.01",
                       "trainer.max_steps=8")
    line = error_line(err, "fit")
    assert code == 2 and "trained with other settings" in line
    for piece in ("model.dim: 32 in the checkpoint, 64 now", "model.window_size: 4 in the checkpoint, 8 now",
                  "model.folding.factor: 64 in the checkpoint, 32 now",
                  "optim.lr: 0.003 in the checkpoint, 0.01 now", "--overwrite"):
        assert piece in line, piece
    assert "max_steps" not in line
    code, _, err = cli(capsys, "fit", cfg, f"run.dir={copy}", "--resume", "last",
                       "model.attention.name=pooled", "data.mode=image_only")
    line = error_line(err, "fit")
    assert "model.attention.name: 'global_conditional' in the checkpoint, 'pooled' now" in line
    assert "data.mode: 'mixed' in the checkpoint, 'image_only' now" in line


def test_validate_with_other_shapes_refused(single_run, capsys):
    _, run = single_run
    code, _, err = cli(capsys, "validate", run / "checkpoints" / "best.ckpt", "model.n_heads=8",
                       "model.embedding.name=factorized")
    line = error_line(err, "validate")
    assert code == 2 and "model.n_heads: 4 in the checkpoint, 8 now" in line
    assert "model.embedding.name: 'pix_table' in the checkpoint, 'factorized' now" in line
    assert "drop these overrides" in line


def test_vocabulary_and_palette_differences_named():
    hp = {"n_words": 262, "folding_state": {"name": "palette", "palette": [[0, 0, 0], [9, 9, 9]]}}
    out = resume.derived_differences(hp, 300, {"name": "palette", "palette": [[0, 0, 0], [8, 8, 8]]})
    assert any("262 tokens in the checkpoint, 300 now" in x for x in out)
    assert any(x.startswith("folding: a 2-color palette") for x in out)
    assert resume.derived_differences(hp, 262, hp["folding_state"]) == []
    # null vs a mapping, and a parameter only one component has, count as differences
    saved = {"model": {"rope_scaling": None, "folding": {"name": "uniform", "factor": 16}}}
    now = {"model": {"rope_scaling": {"factor": 8.0}, "folding": {"name": "palette", "colors": 8}}}
    diff = "\n".join(resume.config_differences(saved, now, resume=False))
    for key in ("model.rope_scaling:", "model.rope_scaling.factor:", "model.folding.name:",
                "model.folding.factor: 16 in the checkpoint, (not set) now", "model.folding.colors:"):
        assert key in diff, key
    # a key the checkpoint's config lacks entirely (an older schema) is not compared
    assert resume.config_differences({"model": {}}, {"model": {"new_key": 1}}, resume=True) == []
    # model.compile changes how the model runs, not what it computes: free on resume
    assert resume.config_differences({"model": {"compile": False, "dim": 8}},
                                          {"model": {"compile": True, "dim": 8}}, resume=True) == []


def test_generate_and_eval_read_a_sharded_folder(fsdp_run, glyph_shards, tmp_path, capsys):
    """`pixword generate` takes a sharded fsdp checkpoint folder, converted aside safely."""
    import json

    _, run = fsdp_run
    folder = run / "checkpoints" / "last.ckpt"
    assert folder.is_dir()
    out = tmp_path / "gen.jsonl"
    assert main(["generate", str(folder), "--data", f"{glyph_shards}/val", "--out", str(out),
                 "--prompt", 'The text says "', "--max-new-tokens", "2"]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == 16 and all(len(r["tokens"]) <= 2 for r in recs)
    assert not list(folder.parent.glob("*single*"))  # the converted copy stayed in a temp dir
