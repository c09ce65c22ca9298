"""Bad store roots and unexpected failures, through the real `workbench` command in a subprocess.

Every failure is one line on stderr naming the path at fault and a non-zero exit; with
``--json`` stdout holds exactly one JSON document. A missing shared root is a one-line
warning and the command goes on with the other roots.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Commands and whether they write to the user store. None of them gets as far as loading.
COMMANDS = [
    (["store", "list"], False),
    (["store", "inspect", "some-model"], False),
    (["store", "seed", "--no-check"], True),
    (["store", "import", "{src}"], True),
    (["store", "delete", "some-model", "--yes"], True),
    (["run", "some-model", "--prompt", "hi"], False),
]


def run_cli(*args: str, store: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "WORKBENCH_STORE": store}
    return subprocess.run([sys.executable, *prefix, *args], capture_output=True, text=True, env=env, timeout=300)


def workbench(*args: str, store: str) -> subprocess.CompletedProcess:
    return run_cli("-m", "workbench.cli", *args, store=store)


def one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def entry_folder(root: Path, name: str = "only-config") -> Path:
    """A (broken) entry: enough for `store list` to show which roots were read."""
    (root / name).mkdir(parents=True)
    (root / name / "config.json").write_text("{}")
    return root


@pytest.fixture
def src(tmp_path: Path) -> str:
    return str(entry_folder(tmp_path / "import-src") / "only-config")


@pytest.fixture
def unwritable(tmp_path: Path) -> Path:
    """A folder this process cannot create files in.

    Permission bits do not bind root, which is how these machines run tests: there, sysfs
    and procfs are real filesystems that refuse new files to everyone, so one always exists on Linux.
    """
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    for candidate in (locked / "store", locked, Path("/sys/kernel/workbench-store"), Path("/proc/workbench-store")):
        try:
            fd, probe = tempfile.mkstemp(dir=candidate if candidate.exists() else candidate.parent)
        except OSError:
            yield candidate
            locked.chmod(0o755)
            return
        os.close(fd)
        os.unlink(probe)
    locked.chmod(0o755)
    pytest.fail("no folder on this machine refuses this process a new file, not even /sys or /proc")


@pytest.mark.parametrize("as_json", [False, True])
@pytest.mark.parametrize("command,writes", COMMANDS, ids=lambda c: " ".join(c) if isinstance(c, list) else None)
def test_a_store_root_that_is_a_file(tmp_path, src, command, writes, as_json) -> None:
    a_file = tmp_path / "models.txt"
    a_file.write_text("not a folder")
    args = [a.format(src=src) for a in command] + (["--json"] if as_json else [])
    for store in (str(a_file), os.pathsep.join([str(tmp_path / "user"), str(a_file)]), str(a_file / "sub")):
        proc = workbench(*args, store=store)
        assert proc.returncode == 1
        line = one_line(proc)
        assert line.startswith("workbench: error: ")
        assert str(a_file) in line
        assert "is a file" in line
        assert "WORKBENCH_STORE" in line  # what to do
        if as_json:
            doc = json.loads(proc.stdout)
            assert doc["error"] == "StoreRootError"
            assert str(a_file) in doc["message"]
        else:
            assert proc.stdout == ""


def test_an_unwritable_user_store_fails_writing_commands_only(unwritable, src) -> None:
    for command, writes in COMMANDS:
        if not writes:
            continue
        args = [a.format(src=src) for a in command]
        proc = workbench(*args, store=str(unwritable))
        assert proc.returncode == 1, proc.stderr
        line = one_line(proc)  # one line: seed fails before it converts anything
        assert f"cannot write to the user store {unwritable}" in line
        assert "WORKBENCH_STORE" in line
        proc = workbench(*args, "--json", store=str(unwritable))
        assert proc.returncode == 1
        assert json.loads(proc.stdout)["error"] == "ReadOnlyStoreError"
    # Reading it is fine.
    proc = workbench("store", "list", "--json", store=str(unwritable))
    assert proc.returncode == 0, proc.stderr
    assert isinstance(json.loads(proc.stdout), list)


def test_a_missing_shared_root_is_a_warning_and_listing_goes_on(tmp_path) -> None:
    user = entry_folder(tmp_path / "user")
    shared = entry_folder(tmp_path / "shared", "team-model")
    missing = tmp_path / "not-mounted"
    store = os.pathsep.join(map(str, [user, missing, shared]))

    proc = workbench("store", "list", "--json", store=store)
    assert proc.returncode == 0
    warning = one_line(proc)
    assert warning.startswith("workbench: warning: ")
    assert str(missing) in warning
    assert "not listed" in warning
    items = json.loads(proc.stdout)  # exactly one JSON document, the usual list
    assert [(i["name"], i["root"]) for i in items] == [("only-config", str(user)), ("team-model", str(shared))]

    proc = workbench("store", "list", store=store)
    assert proc.returncode == 0
    assert str(missing) in one_line(proc)
    assert "team-model" in proc.stdout

    proc = workbench("store", "inspect", "team-model", "--json", store=store)
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["name"] == "team-model"
    assert str(missing) in one_line(proc)


def test_the_empty_store_names_its_roots(tmp_path) -> None:
    proc = workbench("store", "list", store=str(tmp_path / "new-user-store"))
    assert proc.returncode == 0
    assert str(tmp_path / "new-user-store") in proc.stdout
    assert proc.stderr == ""


# --- unexpected exceptions ------------------------------------------------------------------

# The real main() with one command replaced by a failing one: the fault is injected at the
# command's seam so that only the handler around it is under test.
FAULTY = ("import sys, workbench.cli as cli, workbench.cli.store as store_cli\n"
          "def boom(args):\n"
          "    raise RuntimeError('index.json is odd\\nsee above')\n"
          "store_cli.cmd_store_list = boom\n"
          "sys.exit(cli.main(sys.argv[1:]))\n")


def test_an_unexpected_exception_is_one_line_and_debug_shows_the_traceback(tmp_path) -> None:
    store = str(tmp_path / "user")
    proc = run_cli("store", "list", prefix=("-c", FAULTY), store=store)
    assert proc.returncode == 1
    assert proc.stdout == ""
    line = one_line(proc)
    assert line == "workbench: error: RuntimeError: index.json is odd see above (rerun with --debug for the traceback)"

    proc = run_cli("store", "list", "--json", prefix=("-c", FAULTY), store=store)
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["error"] == "RuntimeError"
    one_line(proc)

    for args in (["--debug", "store", "list"], ["store", "list", "--debug"]):
        proc = run_cli(*args, prefix=("-c", FAULTY), store=store)
        assert proc.returncode == 1
        assert "Traceback (most recent call last)" in proc.stderr
        assert "in boom" in proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("workbench: error: RuntimeError")
        assert "--debug" not in proc.stderr.strip().splitlines()[-1]


def test_debug_shows_the_traceback_of_a_workbench_error_too(tmp_path) -> None:
    a_file = tmp_path / "models.txt"
    a_file.write_text("")
    proc = workbench("--debug", "store", "list", store=str(a_file))
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr
    assert "StoreRootError" in proc.stderr


def test_debug_is_accepted_after_any_command(tmp_path) -> None:
    # `leases` is registered by its own module, not by cli.build_parser's helper.
    env = {**os.environ, "WORKBENCH_STORE": str(tmp_path / "user"), "WORKBENCH_LEASE_DIR": str(tmp_path / "leases")}
    proc = subprocess.run([sys.executable, "-m", "workbench.cli", "leases", "--json", "--debug"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    json.loads(proc.stdout)
    proc = workbench("store", "list", "--no-such-flag", store=str(tmp_path / "user"))
    assert proc.returncode == 2
    assert "unrecognized arguments: --no-such-flag" in proc.stderr


def test_json_before_the_command_is_the_same_as_after_it(tmp_path) -> None:
    before = workbench("--json", "run", "no-such-model", "--prompt", "hi", store=str(tmp_path))
    after = workbench("run", "no-such-model", "--prompt", "hi", "--json", store=str(tmp_path))
    assert (before.returncode, json.loads(before.stdout)) == (after.returncode, json.loads(after.stdout))
    assert json.loads(before.stdout)["error"] == "ModelNotFoundError"
