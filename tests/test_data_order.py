"""The data order README promises, against references written from the documentation, not
from the code under test: shards permuted then the units inside each shard; global batch g
the next G = W x B x A units, rank r's contiguous share of it cut into A micro-batches of B;
a micro-batch past the epoch's units one placeholder that scores nothing; every unit exactly
once per epoch, equal batch counts on every rank; the units of a global batch the same for
every split of G; the resume position in global batches.

Units are identified by their tar key: the shards here hold only a json per sample and the
builder turns each unit into a two-target sample whose first target is its key.
"""

from __future__ import annotations

import io
import json
import math
import tarfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pixword_lit.data import stream as data_mod
from pixword_lit.data.elements import build_sample
from pixword_lit.data.shards import ShardSet, resolve_shards
from pixword_lit.data.stream import DataPosition, SampleBuilder, ShardStream
from pixword_lit.model.pixword import ModelOutput, loss_terms
from pixword_lit.model.tokens import IGNORE, Vocab
from pixword_lit.system.config import DEBUG_MODEL, load_config


def write_keyed_shards(folder, sizes) -> list[list[int]]:
    """Mixed-mode tar shards of `sizes` samples; sample u of shard s has key s * 10000 + u.
    -> the keys of each shard in file order."""
    folder.mkdir(parents=True, exist_ok=True)
    shards, keys = [], []
    meta = json.dumps({"elements": [{"type": "text", "text": "x"}]}).encode()
    for s, n in enumerate(sizes):
        name = f"shard-{s:06d}.tar"
        with tarfile.open(folder / name, "w") as tar:
            for u in range(n):
                info = tarfile.TarInfo(f"{s * 10000 + u:08d}.json")
                info.size = len(meta)
                tar.addfile(info, io.BytesIO(meta))
        shards.append({"name": name, "samples": n, "images": 0})
        keys.append([s * 10000 + u for u in range(n)])
    (folder / "index.json").write_text(json.dumps({"shards": shards}))
    return keys


class KeyBuilder(SampleBuilder):
    """The real builder's unit split; each unit becomes `<s> key </s>` (targets: key, </s>)."""

    def build(self, unit):
        return build_sample([np.array([int(unit["raw"]["__key__"])])], self.vocab, self.max_seq_len)


def keyed(tmp_path, sizes):
    keys = write_keyed_shards(tmp_path / "keyed", sizes)
    cfg = load_config(None, [*DEBUG_MODEL, "data.mode=mixed", "data.max_seq_len=64"])
    builder = KeyBuilder(cfg.model, cfg.data, Vocab(6, 64), None)
    return resolve_shards(str(tmp_path / "keyed"), None, "mixed", "data.train"), builder, keys


def run_workers(stream, workers, monkeypatch):
    """Iterate as a DataLoader with `workers` workers would: worker j's batches, round-robin."""
    per_worker = []
    for j in range(workers):
        info = SimpleNamespace(num_workers=workers, id=j)
        monkeypatch.setattr(data_mod, "get_worker_info", lambda info=info: info)
        per_worker.append(list(stream))
    out = []
    for i in range(max(len(w) for w in per_worker)):
        out += [w[i] for w in per_worker if i < len(w)]
    return out


def rows(batch) -> list:
    """The key of each row of a batch; None for a placeholder (which must score nothing)."""
    out = []
    for i, t in enumerate(batch["targets"]):
        if (t == IGNORE).all():
            assert not batch["elem_valid"][i].any() and int(batch["n_pixels"][i]) == 0
            out.append(None)
        else:
            out.append(int(t[0]))
    return out


def expected_batches(global_order: list, world: int, rank: int, batch: int,
                     accumulate: int = 1) -> list[list]:
    """README: global batch g is units [g G, (g + 1) G) of the epoch's order, G = W B A; rank r
    takes [g G + r A B, g G + (r + 1) A B) of them, A micro-batches of B in order; ceil(N / G)
    global batches; a micro-batch with no units is one placeholder (None)."""
    g_size = world * batch * accumulate
    out = []
    for g in range(math.ceil(len(global_order) / g_size)):
        share = global_order[g * g_size + rank * accumulate * batch :][: accumulate * batch]
        out += [share[a * batch : (a + 1) * batch] or [None] for a in range(accumulate)]
    return out


@pytest.mark.parametrize("world,workers", [(1, 1), (2, 2), (3, 2), (2, 3), (4, 1)])
def test_unshuffled_batches_are_the_documented_order(tmp_path, monkeypatch, world, workers):
    shards, builder, keys = keyed(tmp_path, (13, 7, 11))  # 31 units
    in_file_order = [k for shard in keys for k in shard]
    for rank in range(world):
        stream = ShardStream(shards, builder, 5, 7, False, rank, world)
        batches = run_workers(stream, workers, monkeypatch)
        assert [int(b["batch_index"]) for b in batches] == list(range(len(batches)))
        assert [rows(b) for b in batches] == expected_batches(in_file_order, world, rank, 5)


@pytest.mark.parametrize("world,workers", [(1, 2), (2, 2), (3, 1)])
def test_shuffled_batches_follow_the_epoch_order(tmp_path, monkeypatch, world, workers):
    shards, builder, keys = keyed(tmp_path, (13, 7, 11))
    order = ShardStream(shards, builder, 5, 7, True).order(1)
    global_order = [keys[s][u] for s, u in order.tolist()]
    assert sorted(global_order) == sorted(k for shard in keys for k in shard)
    for rank in range(world):
        stream = ShardStream(shards, builder, 5, 7, True, rank, world)
        stream.position = DataPosition(1)
        got = [rows(b) for b in run_workers(stream, workers, monkeypatch)]
        assert got == expected_batches(global_order, world, rank, 5)


def test_97_units_on_2_ranks_placeholders_score_nothing(tmp_path, monkeypatch):
    shards, builder, keys = keyed(tmp_path, (40, 31, 26))
    assert shards.total == 97
    scored, n_batches, placeholders = [], [], 0
    logits_gen = torch.Generator().manual_seed(0)
    for rank in range(2):
        stream = ShardStream(shards, builder, 8, 3, True, rank, 2)
        batches = run_workers(stream, 2, monkeypatch)
        n_batches.append(len(batches))
        for b in batches:
            r = rows(b)
            placeholders += r.count(None)
            logits = torch.randn(*b["targets"].shape, 2 ** 17, generator=logits_gen)
            t = loss_terms(ModelOutput(logits), b["targets"], 6)
            # every real row scores its 2 targets (key, </s>), a placeholder none
            assert int(t.n) == 2 * (len(r) - r.count(None))
            scored += [k for k in r if k is not None]
    assert n_batches == [7, 7]  # ceil(97 / (2 x 8)) global batches on both ranks: nobody waits
    assert placeholders == 1  # the last global batch: 1 unit on rank 0, a placeholder on rank 1
    assert sorted(scored) == sorted(k for shard in keys for k in shard)  # each unit once


def fake_shards(units) -> ShardSet:
    return ShardSet([f"s{i}.tar" for i in range(len(units))], list(units), "")


def test_order_structure_shards_permuted_then_units():
    units = [5, 3, 8, 1, 4, 6]
    shard_orders, identity_units = set(), 0
    for seed in range(4):
        for epoch in range(3):
            order = ShardStream(fake_shards(units), None, 4, seed, True).order(epoch)
            s, u = order[:, 0].tolist(), order[:, 1].tolist()
            runs = [s[0]] + [b for a, b in zip(s, s[1:]) if a != b]  # shard of each run
            assert sorted(runs) == list(range(len(units)))  # each shard one contiguous run
            start = 0
            for shard in runs:
                inside = u[start : start + units[shard]]
                assert sorted(inside) == list(range(units[shard]))  # its units, each once
                identity_units += inside == sorted(inside)
                start += units[shard]
            shard_orders.add(tuple(runs))
    assert len(shard_orders) > 1  # the shard order is permuted, differently per (seed, epoch)
    assert identity_units < 4 * 3 * len(units) // 2  # and so are the units inside the shards


def test_order_is_a_function_of_seed_and_epoch():
    units = [5, 3, 8, 1, 4, 6]
    a = ShardStream(fake_shards(units), None, 4, 3, True)
    b = ShardStream(fake_shards(units), None, 2, 3, True, rank=1, world_size=2)  # built apart
    for epoch in range(3):
        assert np.array_equal(a.order(epoch), b.order(epoch))
    assert not np.array_equal(a.order(0), a.order(1))
    other = [ShardStream(fake_shards(units), None, 4, seed, True).order(0) for seed in (4, 5, 6)]
    assert all(not np.array_equal(a.order(0), o) for o in other)
    plain = ShardStream(fake_shards(units), None, 4, 3, False).order(5)
    assert plain.tolist() == [[s, u] for s, n in enumerate(units) for u in range(n)]


def test_one_process_batches_are_the_order_cut_in_batch_size():
    """The single-process order of before global batches: the epoch's order cut into B, the
    last batch short (not padded), whatever the accumulation."""
    units = [5, 3, 8, 1, 4, 6]  # 27 units
    full = ShardStream(fake_shards(units), None, 4, 1, True).order(2).tolist()
    cut = [full[i : i + 4] for i in range(0, 27, 4)]
    one = ShardStream(fake_shards(units), None, 4, 1, True)
    assert [b.tolist() for b in one.rank_batches(2)] == cut
    # accumulating 2: the same batches, then one empty micro-batch closes the last window
    two = ShardStream(fake_shards(units), None, 4, 1, True, accumulate=2)
    assert [b.tolist() for b in two.rank_batches(2)] == cut + [[]]


SPLITS = [(1, 8, 1), (2, 4, 1), (1, 4, 2), (1, 2, 4), (4, 2, 1), (2, 2, 2), (8, 1, 1)]  # G = 8


@pytest.mark.parametrize("units", [[5, 3, 8, 1, 4, 6], [16, 16], [7]])
def test_a_global_batch_holds_the_same_units_for_every_split(units):
    """W x B x A = 8 however split: global batch g is the same units, each rank's share is
    (g, rank, world size)'s, and every micro-batch count is equal across ranks."""
    shards = fake_shards(units)
    want = [ShardStream(shards, None, 8, 4, True).order(1)[g * 8 : (g + 1) * 8].tolist()
            for g in range(math.ceil(sum(units) / 8))]
    for world, batch, accum in SPLITS:
        streams = [ShardStream(shards, None, batch, 4, True, r, world, accumulate=accum)
                   for r in range(world)]
        per_rank = [s.rank_batches(1) for s in streams]
        assert {len(b) for b in per_rank} == {len(want) * accum}  # nobody waits
        got = [[row for r in range(world) for b in per_rank[r][g * accum : (g + 1) * accum]
                for row in b.tolist()] for g in range(len(want))]
        assert got == want, (world, batch, accum)
        order = [tuple(x) for x in ShardStream(shards, None, 8, 4, True).order(1).tolist()]
        for r in range(world):
            ref = expected_batches(order, world, r, batch, accum)
            assert [[tuple(x) for x in b.tolist()] or [None] for b in per_rank[r]] == ref


@pytest.mark.parametrize("before,after", [((2, 4, 1), (1, 4, 2)), ((2, 4, 1), (1, 8, 1)),
                                          ((1, 8, 1), (2, 4, 1)), ((1, 4, 2), (4, 1, 2))])
def test_resume_position_is_in_global_batches(before, after):
    """A loader state saved after 3 global batches, loaded by a loader of another split of
    the same G: it reads on from global batch 3 (each rank its share), and Lightning's
    counters are asked to count in the new micro-batches."""
    from pixword_lit.data.stream import PixLoader

    shards = fake_shards([16, 16, 9])
    (w0, b0, a0), (w1, b1, a1) = before, after
    old = PixLoader(ShardStream(shards, None, b0, 4, True, 0, w0, accumulate=a0), 0,
                    trained=lambda: DataPosition(0, 3 * a0))
    state = old.state_dict()
    assert (state["global_batches_done"], state["global_batch_size"]) == (3, 8)
    for rank in range(w1):
        stream = ShardStream(shards, None, b1, 4, True, rank, w1, accumulate=a1)
        new, asked = PixLoader(stream, 0, trained=lambda: DataPosition(0, 0)), []
        new.rescale_progress = lambda o, n, asked=asked: asked.append((o, n))
        new.load_state_dict(state)
        assert new._resume == DataPosition(0, 3 * a1)
        assert asked == [(a0, a1)]
        rest = [rows.tolist() for rows in stream.plan(new._resume).rows.values()]
        assert rest == [b.tolist() for b in stream.rank_batches(0)[3 * a1 :]]
    # the end of an epoch, in global batches: the next epoch's start on the new split
    end = {**state, "epoch": 0, "batches_done": len(old.dataset), "global_batches_done": 6}
    new = PixLoader(ShardStream(shards, None, b1, 4, True, 0, w1, accumulate=a1), 0)
    new.load_state_dict(end)
    assert new._resume == DataPosition(1, 0)
