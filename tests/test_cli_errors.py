"""Every numeric and path argument of every subcommand: a bad value is one line
`pixword CMD: error: ...` naming the argument, exit 2, no traceback, nothing written."""

from __future__ import annotations

import pytest

from pixword_lit.cli import main

BAD = [  # (argv, what the line must name); OUT is replaced by a path that must stay unwritten
    (["generate", "CKPT", "--image", "x.png", "--top-k", "-1"],
     "--top-k: must be an integer >= 1, got -1"),
    (["generate", "CKPT", "--image", "x.png", "--top-k", "x"],
     "--top-k: 'x' is not an integer"),
    (["generate", "CKPT", "--image", "x.png", "--top-p", "0"],
     "--top-p: must be in (0, 1], got 0"),
    (["generate", "CKPT", "--image", "x.png", "--top-p", "1.5"],
     "--top-p: must be in (0, 1], got 1.5"),
    (["generate", "CKPT", "--image", "x.png", "--top-p", "nan"],
     "--top-p: must be in (0, 1], got nan"),
    (["generate", "CKPT", "--image", "x.png", "--max-new-tokens", "-3"],
     "--max-new-tokens: must be an integer >= 1"),
    (["generate", "CKPT", "--image", "x.png", "--temperature", "-1"],
     "--temperature: must be in [0, 100]"),
    (["generate", "CKPT", "--images", "d", "--out", "OUT", "--batch-size", "0"],
     "--batch-size: must be an integer >= 1"),
    (["generate", "CKPT", "--sample", "0", "--out", "OUT"],
     "--sample: must be an integer >= 1"),
    (["generate", "CKPT", "--complete", "x.png", "--keep-rows", "-1", "--out", "OUT"],
     "--keep-rows: must be an integer >= 0"),
    (["generate", "CKPT", "--seed", "one"],
     "--seed: invalid int value"),
    (["generate", "CKPT", "--image", "x.png"],
     "CKPT: no such file or folder"),
    (["generate", "CKPT"],
     "give exactly one of --image PATH"),
    (["eval", "captions", "CKPT", "--batch-size", "0"],
     "--batch-size: must be an integer >= 1"),
    (["eval", "captions", "CKPT", "--limit", "0"],
     "--limit: must be an integer >= 1"),
    (["eval", "captions", "CKPT", "--max-new-tokens", "0"],
     "--max-new-tokens: must be an integer >= 1"),
    (["eval", "captions", "CKPT", "--out", "OUT"],
     "CKPT: no such file or folder"),
    (["inspect", "x.png", "--image-size", "0"],
     "--image-size: must be an integer >= 1"),
    (["inspect", "x.png", "--window-size", "0"],
     "--window-size: must be an integer >= 1"),
    (["inspect", "x.png", "--max-seq-len", "0"],
     "--max-seq-len: must be an integer >= 1"),
    (["inspect", "x.png", "--fold", "3"],
     "--fold: the uniform fold factor must be a power of two"),
    (["inspect", "x.png", "--resample", "sharp"],
     "--resample: unknown filter 'sharp'"),
    (["inspect", "x.png"],
     "x.png: cannot read"),
    (["inspect", "x.png", "--image-size", "30", "--window-size", "8"],
     "--window-size 8 does not divide"),
    (["grid", "fold", "--parallel", "0"],
     "--parallel: must be an integer >= 1"),
    (["grid", "fold", "--threads", "0"],
     "--threads: must be an integer >= 1"),
    (["grid", "no_such_grid"],
     "grid file not found: no_such_grid"),
    (["bench", "decoding", "--new-tokens", "0"],
     "--new-tokens: must be an integer >= 1"),
    (["bench", "utilization", "--threads", "-2"],
     "--threads: must be an integer >= 1"),
    (["compare", "no_such_grid", "--out", "OUT"],
     "grid file not found: no_such_grid"),
    (["validate", "CKPT"],
     "CKPT: no such file or folder"),
    (["convert-ckpt", "CKPT", "--out", "OUT"],
     "CKPT: no such file or folder"),
    (["fit", "no_such.yaml"],
     "config file not found: no_such.yaml"),
    (["print-config", "experiments/quickstart.yaml", "model.dim"],
     "'model.dim' is not of the form key=value"),
]


@pytest.mark.parametrize("argv,says", BAD, ids=[" ".join(a[:3]) + " " + a[-1] for a, _ in BAD])
def test_a_bad_argument_is_one_line_exit_2_and_writes_nothing(argv, says, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [str(out) if a == "OUT" else str(tmp_path / "missing.ckpt") if a == "CKPT" else a
            for a in argv]
    says = says.replace("CKPT", str(tmp_path / "missing.ckpt"))
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own checks exit from inside parse_args
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    cmd = " ".join(a for a in argv[:2] if not a.startswith("-") and a in ("generate", "eval", "captions",
                   "inspect", "grid", "bench", "decoding", "utilization", "compare", "validate",
                   "convert-ckpt", "fit", "print-config"))
    assert err.startswith(f"pixword {cmd}: error: ") and err.count("\n") == 1, err
    assert says in err and "Traceback" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == []
