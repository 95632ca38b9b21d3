"""README and base.yaml promises that need no training run: the LR schedule (warm-up, cosine
to min_lr_ratio, flat after), which parameters get weight decay, the color-frequency baseline
against a hand-computed value, `pixword print-config`, and the refusal to reuse a run folder.
"""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from pixword_lit.cli import main
from pixword_lit.errors import ConfigError
from pixword_lit.model.layers import RMSNorm
from pixword_lit.model.tokens import IGNORE
from pixword_lit.system.config import BASE_YAML, DEBUG_MODEL, REPO_ROOT, Config, load_config
from pixword_lit.system.lit_module import PixWordLit, lr_lambda

QUICKSTART = str(REPO_ROOT / "experiments" / "quickstart.yaml")


def module_of(*overrides, folding_state=None) -> PixWordLit:
    base = [o for o in DEBUG_MODEL if not (folding_state and o.startswith("model.folding."))]
    cfg = load_config(None, [*base, *overrides])
    return PixWordLit(OmegaConf.to_container(cfg, resolve=True), 6,
                      folding_state or {"name": "uniform", "factor": 64})


def _leaves(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_base_yaml_states_the_schema_defaults():
    """base.yaml documents every key with its default: it must list exactly the schema's keys
    with exactly the schema's values (they once drifted: data.num_workers 0 vs 2)."""
    schema = _leaves(OmegaConf.to_container(OmegaConf.structured(Config)))
    base = _leaves(OmegaConf.to_container(OmegaConf.load(BASE_YAML)))
    assert sorted(base) == sorted(schema)
    assert {k: v for k, v in base.items() if schema[k] != v} == {}


def test_lr_lambda_by_hand():
    f = lr_lambda(4, 14, 0.1)  # 4 warm-up steps, cosine over steps 4..14, to 0.1
    assert [f(s) for s in range(5)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    assert f(9) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way down the cosine
    assert f(14) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)  # flat at the floor
    g = lr_lambda(0, 10, 0.25)  # the paper's: no warm-up
    assert g(0) == 1.0 and g(5) == pytest.approx(0.25 + 0.75 * 0.5) and g(10) == pytest.approx(0.25)


@pytest.mark.parametrize("overrides,warmup,total", [
    (["optim.warmup_steps=3", "optim.decay_steps=11", "trainer.max_steps=50"], 3, 11),
    (["trainer.max_steps=8"], 0, 8),  # decay_steps null: the cosine spans max_steps
])
def test_optimizer_steps_follow_the_schedule(overrides, warmup, total):
    module = module_of("optim.lr=0.002", "optim.min_lr_ratio=0.1", *overrides)
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert conf["lr_scheduler"]["interval"] == "step"  # stepped per optimizer step, not epoch
    assert isinstance(opt, torch.optim.AdamW)
    seen = []
    for _ in range(total + 3):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    for step, lrs in enumerate(seen):  # every parameter group, by hand
        if step < warmup:
            want = (step + 1) / warmup
        else:
            progress = min(1.0, (step - warmup) / (total - warmup))
            want = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
        assert lrs == pytest.approx([0.002 * want] * len(lrs)), step
    assert seen[-1][0] == pytest.approx(0.0002)  # cosine ends at min_lr_ratio * lr


@pytest.mark.parametrize("embedding", ["pix_table", "linear_rgb"])
def test_weight_decay_on_matrices_and_tables_not_on_norms(embedding):
    """base.yaml: `AdamW decay on matrices and tables (not on norms)`; biases are not decayed."""
    module = module_of("optim.weight_decay=0.05", f"model.embedding.name={embedding}")
    opt = module.configure_optimizers()["optimizer"]
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert len(decay) == sum(len(g["params"]) for g in opt.param_groups)  # no parameter twice
    assert set(decay) == {id(p) for p in module.parameters()}  # and none left out
    kinds = {"norm": 0, "table": 0, "matrix": 0, "bias": 0}
    for m in module.modules():
        if isinstance(m, RMSNorm):
            assert decay[id(m.weight)] == 0.0
            kinds["norm"] += 1
        elif isinstance(m, torch.nn.Embedding):
            assert decay[id(m.weight)] == 0.05
            kinds["table"] += 1
        elif isinstance(m, torch.nn.Linear):
            assert decay[id(m.weight)] == 0.05
            kinds["matrix"] += 1
            if m.bias is not None:
                assert decay[id(m.bias)] == 0.0
                kinds["bias"] += 1
    assert kinds["norm"] >= 2 * 3 + 1 and kinds["matrix"] > 0  # 3 blocks x 2 norms + final
    assert kinds["table"] == (2 if embedding == "pix_table" else 1)  # word table (+ pix table)
    assert kinds["bias"] == (1 if embedding == "linear_rgb" else 0)


def test_color_frequency_baseline_by_hand():
    # 4 pix tokens (a 4-color palette), 6 word ids: class 6 + t is pix token t
    palette = [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]]
    module = module_of("model.folding.name=palette", "model.folding.colors=4",
                       folding_state={"name": "palette", "palette": palette})
    module.color_counts.copy_(torch.tensor([3.0, 0.0, 1.0, 0.0], dtype=torch.float64))
    module.on_validation_epoch_start()
    # add-one smoothing: p = (count + 1) / (4 + 4) = 1/2, 1/8, 1/4, 1/8
    targets = torch.tensor([[6, 6, 8, 7, IGNORE, 2, 5]])  # pix 0, 0, 2, 1; the rest not pix
    want = -(2 * math.log(1 / 2) + math.log(1 / 4) + math.log(1 / 8))  # = 7 ln 2
    assert float(module._baseline_sum(targets)) == pytest.approx(want, rel=1e-12)
    assert want == pytest.approx(7 * math.log(2))


def test_print_config_prints_the_resolved_config(capsys):
    overrides = ["model.dim=128", "optim.lr=0.001", "data.batch_size=3"]
    assert main(["print-config", QUICKSTART, *overrides]) == 0
    printed = OmegaConf.create(capsys.readouterr().out)
    want = load_config(QUICKSTART, overrides)
    assert OmegaConf.to_container(printed) == OmegaConf.to_container(want, resolve=True)
    assert printed.model.dim == 128 and printed.optim.lr == 0.001 and printed.data.batch_size == 3
    assert printed.run.name == "quickstart"
    quick = OmegaConf.load(QUICKSTART)  # the experiment's own values reach the printout
    for key in ("trainer.max_steps", "model.image_size", "data.mode"):
        assert OmegaConf.select(printed, key) == OmegaConf.select(quick, key), key
    # a bad key: one error line naming it, nothing on stdout
    assert main(["print-config", QUICKSTART, "model.dimm=3"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and "dimm" in out.err and len(out.err.strip().splitlines()) == 1


def test_run_folder_with_checkpoints_is_not_reused_without_overwrite(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"an earlier run")
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    rc = main(["fit", QUICKSTART, f"run.dir={run}"])
    err = capsys.readouterr().err
    assert rc == 2 and "run.dir" in err and "--overwrite" in err and "--resume last" in err
    assert len(err.strip().splitlines()) == 1
    # nothing of the earlier run was touched, nothing new was written
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*")) == [
        "checkpoints", "checkpoints/last.ckpt", "metrics.jsonl"]
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == b"an earlier run"
    from pixword_lit.fit.trainer import prepare_run_dir

    prepare_run_dir(run, None, overwrite=True)  # --overwrite starts the folder again
    assert run.is_dir() and list(run.iterdir()) == []


def test_broken_experiment_yaml_is_one_error_line_naming_the_file(tmp_path, capsys):
    bad = tmp_path / "broken.yaml"
    bad.write_text("model:\n  dim: [1\n")
    assert main(["print-config", str(bad)]) == 2
    out = capsys.readouterr()
    assert out.out == "" and str(bad) in out.err and len(out.err.strip().splitlines()) == 1


def test_every_third_party_import_is_declared_in_pyproject():
    """pyproject.toml declares what the code imports: the package and data_prep in
    `dependencies`, the tests also in the `dev` extra (grid.py once imported an undeclared yaml)."""
    import ast
    import importlib.metadata
    import re
    import sys
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]

    def names(reqs):
        return {re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}

    runtime = names(project["dependencies"])
    dev = runtime | names(project["optional-dependencies"]["dev"])
    dists = importlib.metadata.packages_distributions()
    local = {"pixword_lit", "data_prep", "conftest"} | {p.stem for p in (REPO_ROOT / "tests").glob("*.py")}
    for folders, declared in (("pixword_lit data_prep", runtime), ("tests", dev)):
        for folder in folders.split():
            for path in (REPO_ROOT / folder).rglob("*.py"):
                for node in ast.walk(ast.parse(path.read_text())):
                    if isinstance(node, ast.Import):
                        tops = [a.name.split(".")[0] for a in node.names]
                    elif isinstance(node, ast.ImportFrom) and node.level == 0:
                        tops = [node.module.split(".")[0]]
                    else:
                        continue
                    for top in tops:
                        if top in sys.stdlib_module_names or top in local or top == "__future__":
                            continue
                        dist = {d.lower() for d in dists.get(top, [top])}
                        assert dist & declared, f"{path.relative_to(REPO_ROOT)} imports {top} ({dist})"


def test_package_imports_have_no_circles():
    """Module-level imports inside pixword_lit form no cycle (build <-> lit_module and
    components <-> config once did, hidden by imports inside functions)."""
    import ast

    root = REPO_ROOT / "pixword_lit"
    graph = {}
    for path in root.rglob("*.py"):
        name = ".".join(("pixword_lit", *path.with_suffix("").relative_to(root).parts))
        deps = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pixword_lit"):
                deps |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("pixword_lit")}
        graph[name.removesuffix(".__init__")] = deps
    state = {}

    def visit(mod, path):
        state[mod] = "open"
        for dep in sorted(d for d in graph[mod] if d in graph):
            assert state.get(dep) != "open", " -> ".join([*path, mod, dep])
            if dep not in state:
                visit(dep, [*path, mod])
        state[mod] = "done"

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [])
    assert {"pixword_lit.system.build", "pixword_lit.system.lit_module",
            "pixword_lit.system.config"} <= set(graph)


@pytest.mark.parametrize("family,name", [("folding", "palette"), ("attention", "full_causal"),
                                         ("embedding", "linear_rgb"), ("objective", "dense")])
def test_a_component_by_its_name_alone_is_that_component_with_its_defaults(family, name):
    """`model.attention=full_causal`, as a user types it, is `model.attention.name=...`."""
    quick = str(REPO_ROOT / "experiments" / "quickstart.yaml")
    alone = load_config(quick, [f"model.{family}={name}"])
    dotted = load_config(quick, [f"model.{family}.name={name}"])
    assert OmegaConf.to_container(alone.model[family]) == {"name": name}
    assert alone == dotted
    with pytest.raises(ConfigError, match=f"model.{family}.name: unknown {family} 'nope'"):
        load_config(quick, [f"model.{family}=nope"])


def test_a_parameter_the_new_component_lacks_is_refused_by_name():
    """Changing the folding's name and giving the old folding's factor in one command fails:
    the palette has no factor, and it is not kept silently."""
    quick = str(REPO_ROOT / "experiments" / "quickstart.yaml")
    for overrides in (["model.folding.name=palette", "model.folding.factor=32"],
                      ["model.folding=palette", "model.folding.factor=32"]):
        with pytest.raises(ConfigError, match="model.folding.factor: not a parameter of folding 'palette'"):
            load_config(quick, overrides)
    assert "factor" not in load_config(quick, ["model.folding=palette"]).model.folding


def test_cpu_processes_share_the_runs_cores_not_the_machines(monkeypatch):
    """Under a grid launcher a cell's share is OMP_NUM_THREADS; its ddp processes split that,
    not os.cpu_count()."""
    import os

    from pixword_lit.system.lit_module import threads_per_process

    monkeypatch.setenv("OMP_NUM_THREADS", "6")
    assert [threads_per_process(n) for n in (1, 2, 4, 8)] == [6, 3, 1, 1]
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert [threads_per_process(n) for n in (1, 2, 3)] == [4, 2, 1]
    monkeypatch.setenv("OMP_NUM_THREADS", "")  # empty: not set
    assert threads_per_process(2) == 2


def test_each_load_gets_its_own_config_and_sees_base_yaml_edits(tmp_path, monkeypatch):
    """load_config keeps schema <- base.yaml made once (config.py): a config changed by its
    caller leaves the next load alone, and an edited base.yaml is read again."""
    from pixword_lit.system import config as config_mod

    first = load_config(None, ["model.attention=full_causal", "model.image_size=32"])
    first.model.dim = 4
    first.model.folding = {"name": "palette"}
    again = load_config(None, [])
    assert again.model.dim == Config().model.dim and again.model.attention.name != "full_causal"
    assert again.model.folding.name == OmegaConf.load(BASE_YAML).model.folding.name
    base = tmp_path / "base.yaml"
    base.write_text(BASE_YAML.read_text())
    monkeypatch.setattr(config_mod, "BASE_YAML", base)
    assert load_config(None, []).optim.lr == 6.0e-4  # as base.yaml says
    base.write_text(BASE_YAML.read_text().replace("  lr: 6.0e-4 ", "  lr: 1.5e-3 ", 1))
    assert load_config(None, []).optim.lr == 1.5e-3
