"""files.py: outputs are written aside and renamed; a failed write leaves the old file."""

from __future__ import annotations

import json
import os

import pytest

from pixword_lit.files import atomic_save, atomic_write, write_json


def test_writes_replace_whole_files_and_leave_nothing_beside(tmp_path):
    p = tmp_path / "sub" / "summary.json"
    write_json(p, {"a": 1, "path": tmp_path})
    assert json.loads(p.read_text()) == {"a": 1, "path": str(tmp_path)}
    atomic_write(p, b"\x00\x01", per_process=True)
    assert p.read_bytes() == b"\x00\x01"
    assert os.listdir(p.parent) == ["summary.json"]


def test_a_write_that_fails_midway_keeps_the_old_file(tmp_path):
    p = tmp_path / "samples.png"
    p.write_text("good")

    def half_then_crash(tmp):
        tmp.write_text("ha")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_save(p, half_then_crash)
    assert p.read_text() == "good"
