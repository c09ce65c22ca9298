"""The holdings files the meter reads (runtime/holdings.py) are read as untrusted: each hostile kind is
skipped, a good file beside it is still read, and nothing a hostile file holds reaches the server's
``/workbench/api/kernels`` document as invalid JSON.

Each case is checked against a control: the same document, well-formed and ours, is read.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from multiuser import OTHER, require_root, run_as, shared_tmp, sticky_folder
from workbench.runtime.holdings import MAX_BYTES, PREFIX, read_holdings

MODEL = {"name": "m", "engine": "transformers", "precision": "bfloat16", "footprint_bytes": 10,
         "placement_bytes": {"cpu": 10}}


@contextlib.contextmanager
def live_processes(n: int) -> Iterator[list[int]]:
    """``n`` processes of this user, alive until the block ends (each waits on its stdin)."""
    procs = [subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
             for _ in range(n)]
    try:
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=30)


def doc(pid: int, models: list | None = None) -> dict:
    """The document ``pid`` would publish (its start time from psutil)."""
    return {"pid": pid, "started_s": psutil.Process(pid).create_time(), "updated_s": 0.0,
            "models": [MODEL] if models is None else models}


def path_for(folder: Path, pid: int | str) -> Path:
    return folder / f"{PREFIX}{pid}.json"


def write(folder: Path, pid: int, text: str | bytes) -> Path:
    p = path_for(folder, pid)
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return p


def test_a_well_formed_file_is_read_and_one_without_its_start_time_is_not(tmp_path: Path) -> None:
    with live_processes(2) as (good, undated):
        write(tmp_path, good, json.dumps(doc(good)))
        write(tmp_path, undated, json.dumps({k: v for k, v in doc(undated).items() if k != "started_s"}))
        # A reused PID is told apart by the start time: a file without one cannot be.
        assert read_holdings(tmp_path) == {good: [MODEL]}


def test_a_file_another_user_wrote_is_skipped_even_when_it_names_our_process() -> None:
    """A runtime folder others can write to (a misconfigured JUPYTER_RUNTIME_DIR): another uid's
    document, perfect in every field, is not listed as ours."""
    require_root()

    def plant(folder: str, pid: int, text: str) -> int:
        p = Path(folder) / f"{PREFIX}{pid}.json"
        p.write_text(text)
        return p.stat().st_uid

    with shared_tmp() as base, live_processes(2) as (mine, planted):
        folder = sticky_folder(base / "runtime")
        assert run_as(OTHER, plant, str(folder), planted, json.dumps(doc(planted))) == OTHER
        write(folder, mine, json.dumps(doc(mine)))
        assert read_holdings(folder) == {mine: [MODEL]}


def test_an_oversized_file_is_refused_unread(tmp_path: Path) -> None:
    with live_processes(2) as (small, big):
        write(tmp_path, small, json.dumps(doc(small)))
        text = json.dumps(doc(big))
        write(tmp_path, big, text + " " * (MAX_BYTES + 1 - len(text)))  # valid JSON, one byte too many
        assert path_for(tmp_path, big).stat().st_size == MAX_BYTES + 1
        assert read_holdings(tmp_path) == {small: [MODEL]}


def test_symlinks_and_fifos_are_not_followed_or_opened(tmp_path: Path) -> None:
    """A symlink to a good document elsewhere is not read; a FIFO never blocks the listing."""
    with live_processes(3) as (real, linked, fifo):
        write(tmp_path, real, json.dumps(doc(real)))
        elsewhere = tmp_path / "elsewhere.json"
        elsewhere.write_text(json.dumps(doc(linked)))
        path_for(tmp_path, linked).symlink_to(elsewhere)
        os.mkfifo(path_for(tmp_path, fifo))
        assert read_holdings(tmp_path) == {real: [MODEL]}


@pytest.mark.parametrize("case", [
    "not json", "not utf-8", "deep", "a list", "pid as text", "pid as bool", "models not a list",
    "started_s as text", "started_s NaN",
])
def test_a_malformed_document_is_skipped(tmp_path: Path, case: str) -> None:
    with live_processes(2) as (good, bad):
        write(tmp_path, good, json.dumps(doc(good)))
        d = doc(bad)
        text: str | bytes = {
            "not json": f"{{'pid': {bad}",
            "not utf-8": b"\xff\xfe" + json.dumps(d).encode(),
            "deep": json.dumps({**d, "x": 0})[:-1] + ', "y": ' + "[" * 5000 + "]" * 5000 + "}",
            "a list": json.dumps([d]),
            "pid as text": json.dumps({**d, "pid": str(bad)}),
            "pid as bool": json.dumps({**d, "pid": True}),
            "models not a list": json.dumps({**d, "models": {"m": MODEL}}),
            "started_s as text": json.dumps({**d, "started_s": str(d["started_s"])}),
            "started_s NaN": json.dumps({**d, "started_s": float("nan")}),
        }[case]
        write(tmp_path, bad, text)
        assert read_holdings(tmp_path) == {good: [MODEL]}


def test_a_file_named_with_a_non_ascii_digit_does_not_break_the_listing(tmp_path: Path) -> None:
    """``"²".isdigit()`` is true and ``int("²")`` raises: the listing must not end in that error."""
    with live_processes(1) as (good,):
        write(tmp_path, good, json.dumps(doc(good)))
        path_for(tmp_path, "²").write_text(json.dumps(doc(good)))
        path_for(tmp_path, "-1").write_text(json.dumps(doc(good)))
        assert read_holdings(tmp_path) == {good: [MODEL]}


def test_model_records_of_the_wrong_shape_are_left_out_and_the_document_stays_strict_json(tmp_path: Path) -> None:
    """Only records of :func:`model_record`'s shape are kept; a NaN byte count (Python's json reads it,
    a browser's JSON.parse refuses it) would otherwise blank the meter's panel."""
    from workbench.server.documents import kernels_document

    bad_records = [
        "a string", [1, 2], {**MODEL, "footprint_bytes": float("nan")}, {**MODEL, "footprint_bytes": -1},
        {**MODEL, "footprint_bytes": True}, {**MODEL, "placement_bytes": {"cpu": float("inf")}},
        {**MODEL, "placement_bytes": [["cpu", 1]]}, {**MODEL, "name": None}, {**MODEL, "name": "n" * 100_000},
        {k: v for k, v in MODEL.items() if k != "engine"},
    ]
    extra = {**MODEL, "name": "kept", "script": "<img src=x onerror=alert(1)>"}
    with live_processes(1) as (pid,):
        write(tmp_path, pid, json.dumps(doc(pid, [*bad_records, MODEL, extra])))
        held = read_holdings(tmp_path)
        # The good records, with only the fields the document defines.
        assert held == {pid: [MODEL, {**MODEL, "name": "kept"}]}
        json.dumps(kernels_document([], held, cpu_sample_s=0), allow_nan=False)
