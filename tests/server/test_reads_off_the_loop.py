"""Issue 15, section 2, in a real jupyter_server (pytest-jupyter): reads off the loop, errors as Jupyter's JSON.

A read that never ends stands for a lease file on a stuck mount (a user cannot make one
on a local disk, where every read is bounded: see test_hostile_shared_files.py): it
waits on an event the test sets at the end (or after 60 s, so that the code of before,
which read leases on the event loop during /metrics, fails instead of hanging the run).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import HTTPClientError

from fakes.fake_pynvml import FakeGpu
from workbench.errors import LeaseFolderError
from workbench.server import app, documents
from workbench.server.offloop import OffLoop, Snapshot
from workbench.server.statuses import STATUS_BY_ERROR, status_of

GiB = 2**30
READ_TIMEOUT_S = 1.0
#: Far above the 1 s read bound and the 0.5 s a scrape may wait, far below the 60 s a stuck read lasts.
ANSWER_WITHIN_S = 20.0


@pytest.fixture
def jp_server_config(jp_server_config: dict) -> dict:
    jp_server_config["WorkbenchSettings"]["server_read_timeout_s"] = READ_TIMEOUT_S
    return jp_server_config


async def timed(jp_fetch, *path: str, **kw):
    """``(response or HTTPClientError, seconds)``."""
    start = time.monotonic()
    try:
        result = await jp_fetch(*path, **kw)
    except HTTPClientError as err:
        result = err
    return result, time.monotonic() - start


def metric_families(body: bytes) -> dict:
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


async def test_a_stuck_lease_read_blocks_neither_metrics_nor_rest(jp_fetch, jp_serverapp, fake_nvml, tmp_path,
                                                                  monkeypatch) -> None:
    fake_nvml([FakeGpu(memory_total_bytes=24 * GiB)], torch=True)
    from workbench.devices.leases import LeaseBook

    book = LeaseBook(tmp_path / "leases", heartbeat_s=None)
    lease = book.acquire("cuda:0", 3 * GiB, "tiny-llama")
    assert [x["lease_id"] for x in json.loads((await jp_fetch("workbench", "api", "leases")).body)["leases"]] \
        == [lease.lease_id]
    state = jp_serverapp.web_app.settings["workbench_state"]

    release = threading.Event()
    calls = []
    real = documents.leases_document

    def stuck(book):
        calls.append(time.monotonic())
        release.wait(60)
        return real(book)

    monkeypatch.setattr(documents, "leases_document", stuck)
    try:
        for _ in range(2):
            response, took = await timed(jp_fetch, "metrics")
            assert response.code == 200
            assert took < ANSWER_WITHIN_S
            families = metric_families(response.body)
            # The last reading is served, with its age: the lease is still there.
            [reserved] = families["workbench_gpu_lease_reserved_bytes"].samples
            assert reserved.labels["lease_id"] == lease.lease_id
            assert reserved.value == 3 * GiB
            [age] = families["workbench_gpu_leases_age_seconds"].samples
            assert age.value >= 0
        for _ in range(2):
            err, took = await timed(jp_fetch, "workbench", "api", "leases")
            assert isinstance(err, HTTPClientError), err
            assert err.code == 503, err
            assert READ_TIMEOUT_S * 0.9 <= took < ANSWER_WITHIN_S
            body = json.loads(err.response.body)
            assert set(body) == {"message", "reason"}  # jupyter_server's APIHandler error shape
            assert str(tmp_path / "leases") in body["message"]
            assert "longer than 1 s" in body["message"]
        status, took = await timed(jp_fetch, "api", "status")
        assert status.code == 200
        assert took < ANSWER_WITHIN_S
        # One stuck read, one thread: the scrapes and requests above all waited for the same read.
        assert len(calls) == 1
        assert state.reads.busy("leases")
    finally:
        release.set()
    # The stuck read ends; the next request gets a fresh answer.
    deadline = time.monotonic() + ANSWER_WITHIN_S
    while True:
        response, _ = await timed(jp_fetch, "workbench", "api", "leases")
        if not isinstance(response, HTTPClientError) or time.monotonic() > deadline:
            break
    assert response.code == 200
    assert [x["lease_id"] for x in json.loads(response.body)["leases"]] == [lease.lease_id]
    book.release(lease)


async def test_a_stuck_store_read_leaves_the_leases_answering(jp_fetch, jp_serverapp, monkeypatch) -> None:
    release = threading.Event()
    monkeypatch.setattr(documents, "store_document", lambda store: release.wait(60) and [])
    try:
        err, took = await timed(jp_fetch, "workbench", "api", "store")
        assert isinstance(err, HTTPClientError)
        assert err.code == 503
        assert took < ANSWER_WITHIN_S
        assert "the store (" in json.loads(err.response.body)["message"]
        leases, took = await timed(jp_fetch, "workbench", "api", "leases")
        assert leases.code == 200
        assert took < ANSWER_WITHIN_S
    finally:
        release.set()


async def test_user_errors_get_their_status_in_jupyters_json_shape(jp_fetch, jp_serverapp, monkeypatch) -> None:
    cases = [
        (("store", "no-such-model"), 404, ["no model named 'no-such-model'", "known models: tiny-llama"]),
        (("store", "50%-off"), 404, ["no model named '50%-off'"]),  # a '%' shown as it is, not doubled
        (("store", ".hidden"), 400, ["'.hidden' is not a plain name"]),
        (("store", ".."), 400, ["'..' is not a plain name"]),
    ]
    for path, code, words in cases:
        with pytest.raises(HTTPClientError) as err:
            await jp_fetch("workbench", "api", *path)
        assert err.value.code == code, path
        body = json.loads(err.value.response.body)
        assert set(body) == {"message", "reason"}
        assert all(w in body["message"] for w in words), body
        assert "%%" not in body["message"]
    with pytest.raises(HTTPClientError) as err:
        await jp_fetch("workbench", "api", "telemetry", params={"since": "50%"})  # jp_fetch encodes params
    assert err.value.code == 400
    assert "since='50%'" in json.loads(err.value.response.body)["message"]

    # A fault of the machine keeps its message, with 500.
    def refused(book):
        raise LeaseFolderError("lease folder /srv/leases is owned by mallory", hint="ask the administrator")

    monkeypatch.setattr(documents, "leases_document", refused)
    with pytest.raises(HTTPClientError) as err:
        await jp_fetch("workbench", "api", "leases")
    assert err.value.code == 500
    assert "owned by mallory" in json.loads(err.value.response.body)["message"]

    # A bug is a 500 that says nothing of the internals.
    def bug(store):
        raise KeyError("internal detail")

    monkeypatch.setattr(documents, "store_document", bug)
    with pytest.raises(HTTPClientError) as err:
        await jp_fetch("workbench", "api", "store")
    assert err.value.code == 500
    assert "internal detail" not in err.value.response.body.decode()


def test_every_status_row_is_a_workbench_error_and_unlisted_ones_are_faults() -> None:
    from workbench import errors

    assert all(issubclass(kind, errors.WorkbenchError) for kind, _ in STATUS_BY_ERROR)
    assert status_of(errors.ModelNotFoundError("x")) == 404
    assert status_of(errors.UnsafeNameError("x")) == 400  # before its StoreError/PermissionError parents
    assert status_of(errors.LeaseFolderError("x")) == 500
    assert status_of(ValueError("x")) == 500


def test_a_snapshot_serves_the_last_reading_while_a_slow_one_runs() -> None:
    reads = OffLoop(max_workers=2)
    now = [100.0]
    gate = threading.Event()
    gate.set()
    started = []

    def read() -> int:
        started.append(1)
        gate.wait(60)
        return len(started)

    snap = Snapshot(reads, "k", read, wait_s=10.0, clock=lambda: now[0])
    try:
        assert snap.peek() == (None, None)
        assert snap.get() == (1, 0.0)  # a quick read is waited for
        gate.clear()
        now[0] += 5
        start = time.monotonic()
        snap._wait_s = 0.2
        assert snap.get() == (1, 5.0)  # the new read is slow: the last value, after at most wait_s
        assert time.monotonic() - start < ANSWER_WITHIN_S
        deadline = time.monotonic() + 30  # the pool thread may start late on a loaded machine
        while len(started) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert reads.busy("k")
        assert len(started) == 2
        assert snap.get() == (1, 5.0)
        assert len(started) == 2  # in flight: not started again
        gate.set()
        reads.submit("k", read).result(timeout=60)  # the one in flight
        assert snap.peek()[0] == 2
    finally:
        gate.set()
        reads.close()


def test_a_failing_read_is_logged_once_and_keeps_the_last_value(caplog) -> None:
    reads = OffLoop(max_workers=1)
    results = [lambda: 7, lambda: 1 / 0, lambda: 1 / 0]

    snap = Snapshot(reads, "k", lambda: results.pop(0)(), wait_s=30.0)
    try:
        with caplog.at_level("WARNING", logger="workbench.server"):
            assert snap.get()[0] == 7
            assert snap.get()[0] == 7
            assert snap.get()[0] == 7
        warnings = [r for r in caplog.records if "reading k failed" in r.getMessage()]
        assert len(warnings) == 1
        assert "ZeroDivisionError" in warnings[0].getMessage()
    finally:
        reads.close()


def test_the_setting_refuses_a_read_bound_that_is_no_bound() -> None:
    from workbench.config import WorkbenchSettings
    from workbench.errors import ConfigError

    assert WorkbenchSettings().server_read_timeout_s == 30.0
    for bad in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ConfigError, match="server_read_timeout_s"):
            WorkbenchSettings(server_read_timeout_s=bad)


def test_the_state_closes_its_reads(tmp_path: Path) -> None:
    from workbench.config import WorkbenchSettings

    state = app.ServerState(WorkbenchSettings(lease_dir=str(tmp_path / "l")))
    state.close()
    with pytest.raises(RuntimeError):
        state.reads.submit("x", lambda: 1)
