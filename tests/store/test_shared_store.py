"""Shared store roots: layering and shadowing, nothing ever written in a read-only root, and the
administrator's import into a shared root (permissions, atomic: a reader never sees half a model)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from workbench.errors import ReadOnlyStoreError
from workbench.store import ModelStore
from workbench.store.shared import SHARED_DIR_MODE, SHARED_FILE_MODE, import_into_root

ROOT = Path(__file__).resolve().parents[2]


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``root`` (itself included) with its mode, size and mtime: any write changes it."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in [".", *dirs, *files]:
            p = Path(dirpath) / name
            st = os.lstat(p)
            out[str(p)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def shared(tmp_path, tiny_models) -> Path:
    """A shared root holding two tiny models, made read-only (0555) like a team's model folder."""
    root = tmp_path / "team-models"
    for arch in ("llama", "gpt2"):
        shutil.copytree(tiny_models[arch], root / f"tiny-{arch}")
    yield root
    os.chmod(root, 0o755)


def run_cli(*args: str, store: str, user: list[str] | None = None, env: dict | None = None):
    env = {**os.environ, "WORKBENCH_STORE": store, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([*(user or []), sys.executable, "-m", "workbench.cli", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_listing_names_each_root_and_the_shadowing(isolated_store, shared):
    shutil.copytree(shared / "tiny-llama", isolated_store / "tiny-llama")
    listed = ModelStore([isolated_store, shared], cache_path=None).list()
    by = {(e.name, str(e.root)): e for e in listed}
    mine, theirs = by[("tiny-llama", str(isolated_store))], by[("tiny-llama", str(shared))]
    assert mine.writable
    assert not mine.shadowed
    assert mine.shadowed_by is None
    assert not theirs.writable
    assert theirs.shadowed
    assert theirs.shadowed_by == isolated_store / "tiny-llama"
    assert by[("tiny-gpt2", str(shared))].root == shared
    assert not by[("tiny-gpt2", str(shared))].shadowed
    proc = run_cli("store", "list", store=os.pathsep.join([str(isolated_store), str(shared)]))
    assert proc.returncode == 0, proc.stderr
    assert f"tiny-llama (shadowed by {isolated_store / 'tiny-llama'})" in proc.stdout
    assert f"{shared} (read-only)" in proc.stdout
    assert f"{isolated_store} (rw)" in proc.stdout
    doc = json.loads(run_cli("store", "list", "--json", store=os.pathsep.join([str(isolated_store), str(shared)]))
                     .stdout)
    shadow = [d for d in doc if d["shadowed"]]
    assert [(d["root"], d["shadowed_by"]) for d in shadow] == [(str(shared), str(isolated_store / "tiny-llama"))]


def test_nothing_is_ever_written_in_a_read_only_root(isolated_store, shared):
    from workbench.runtime import LoadSpec, Registry

    os.chmod(shared, 0o555)
    before = snapshot(shared)
    store_path = os.pathsep.join([str(isolated_store), str(shared)])
    store = ModelStore([isolated_store, shared])  # with the on-disk index cache, as users run it
    store.list()
    assert store.get("tiny-gpt2").ok
    for args in (("store", "list", "--json"), ("store", "inspect", "tiny-llama", "--json")):
        assert run_cli(*args, store=store_path).returncode == 0
    reg = Registry(store)
    reg.load(LoadSpec("tiny-llama"))
    reg.unload_all()
    with pytest.raises(ReadOnlyStoreError) as err:
        store.plan_delete("tiny-llama")
    assert str(shared) in str(err.value)
    assert err.value.root == shared
    refused = run_cli("store", "delete", "tiny-gpt2", "--yes", store=store_path)
    assert refused.returncode == 1
    assert f"shared store {shared}, which is read-only" in refused.stderr
    assert snapshot(shared) == before  # no lock file, no cache, no changed byte or mode


def test_import_into_a_shared_root_sets_permissions_for_every_user(tmp_path, tiny_models, isolated_store):
    root = tmp_path / "srv-models"
    old = os.umask(0o077)  # a private umask must not leak into what others read
    try:
        entry = import_into_root(tiny_models["qwen2"], root, name="team-qwen2")
    finally:
        os.umask(old)
    assert entry.ok
    assert entry.root == root
    assert entry.path == root / "team-qwen2"
    modes = {p: stat.S_IMODE(os.stat(p).st_mode) for p in [entry.path, *entry.path.rglob("*")]}
    assert {m for p, m in modes.items() if p.is_dir()} == {SHARED_DIR_MODE} == {0o755}
    assert {m for p, m in modes.items() if p.is_file()} == {SHARED_FILE_MODE} == {0o644}
    # Copies, not links to the administrator's own files.
    src = tiny_models["qwen2"] / "model.safetensors"
    assert os.stat(entry.path / "model.safetensors").st_ino != os.stat(src).st_ino
    assert [p.name for p in root.iterdir()] == ["team-qwen2"]  # no staging folder left behind
    # Users see it as a read-only shared entry.
    [seen] = [e for e in ModelStore([isolated_store, root], cache_path=None).list() if e.name == "team-qwen2"]
    assert seen.ok
    assert not seen.writable
    assert seen.params == entry.params


def test_cli_import_with_root(tmp_path, tiny_models, isolated_store):
    root = tmp_path / "srv"
    proc = run_cli("store", "import", str(tiny_models["gpt2"]), "--root", str(root), "--json", store=str(isolated_store))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["root"] == str(root)
    assert doc["status"] == "ok"
    assert (root / "tiny-gpt2" / "config.json").is_file()
    assert not isolated_store.exists() or not any(isolated_store.iterdir())


def test_a_reader_never_sees_half_a_model(tmp_path, tiny_models, isolated_store):
    """A reader lists the store between every file the import copies: the entry is absent or whole."""
    root = tmp_path / "srv"
    root.mkdir()
    src = tiny_models["llama-sharded"]  # several shards, so several steps to interleave with
    n_files = sum(1 for p in src.rglob("*") if p.is_file())
    expected = ModelStore([src.parent], cache_path=None).get(src.name)
    reader_turn, reader_done = threading.Event(), threading.Event()
    stop = threading.Event()
    seen: list[tuple[str, int | None] | None] = []
    staging: list[bool] = []
    errors: list[BaseException] = []

    def reader() -> None:
        store = ModelStore([isolated_store, root], cache_path=None)
        try:
            for _ in range(10 * n_files + 10):  # bounded
                reader_turn.wait(timeout=60)
                reader_turn.clear()
                found = [e for e in store.list() if e.name == "team-llama"]
                seen.append((found[0].status, found[0].params) if found else None)
                staging.append(any(p.name.startswith(".import-") for p in root.iterdir()))
                reader_done.set()
                if stop.is_set():
                    return
        except BaseException as exc:  # noqa: B036 -- reported to the test thread
            errors.append(exc)
            reader_done.set()

    def between_files(_msg: str) -> None:  # called by the importer before each file: let the reader list
        reader_done.clear()
        reader_turn.set()
        assert reader_done.wait(timeout=60)

    t = threading.Thread(target=reader)
    t.start()
    try:
        import_into_root(src, root, name="team-llama", progress=between_files)
    finally:
        stop.set()
        reader_done.clear()
        reader_turn.set()
        t.join(timeout=60)
    assert not errors
    assert not t.is_alive()
    during, after = seen[:-1], seen[-1]
    assert len(during) == n_files  # the reader listed once per copied file, mid-import
    assert during == [None] * n_files  # never a partial (broken) entry while the copy ran
    assert staging[:-1] == [True] * n_files
    assert staging[-1] is False  # the copy was under way each time
    assert after == ("ok", expected.params)


def _nobody() -> list[str]:
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def test_a_root_the_user_may_not_write_is_refused_by_name(tiny_models):
    """As another user (root runs the CLI as nobody; anyone else is refused by a 0555 folder)."""
    base = Path(tempfile.mkdtemp(prefix="wb-shared-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        root = base / "models"
        root.mkdir()
        src = base / "src"
        shutil.copytree(tiny_models["gpt2"], src)
        os.chmod(root, 0o555)
        for p in [src, *src.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        env = {"HOME": str(base), "WORKBENCH_CACHE_DIR": str(base / "cache"), "WORKBENCH_LEASE_DIR": str(base)}
        user = _nobody() if os.geteuid() == 0 else []
        proc = run_cli("store", "import", str(src), "--root", str(root), store=str(base / "user"), user=user,
                       env=env)
        assert proc.returncode == 1
        assert f"cannot import into the store root {root}" in proc.stderr
        assert "may not write there" in proc.stderr
        # The same folder as the user's own store: refused by name too, nothing left behind.
        proc = run_cli("store", "import", str(src), store=str(root), user=user, env=env)
        assert proc.returncode == 1
        assert f"cannot write to the user store {root}" in proc.stderr
        assert list(root.iterdir()) == []
    finally:
        os.chmod(base / "models", 0o755)
        shutil.rmtree(base, ignore_errors=True)


def test_store_panel_names_roots_and_shadowing(isolated_store, shared):
    from workbench.ui.store_panel import entries_table_html

    shutil.copytree(shared / "tiny-gpt2", isolated_store / "tiny-gpt2")
    html = entries_table_html(ModelStore([isolated_store, shared], cache_path=None).list())
    assert f"{shared} (read-only), shadowed by {isolated_store / 'tiny-gpt2'}" in html
    assert f"{isolated_store} (writable)" in html
    assert f"{shared} (read-only)</td>" in html
