"""The `workbench` command's store commands, run as a user would, in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONTRACT_FIELDS = {"name", "path", "root", "writable", "format", "status", "problem", "model_type", "params",
                   "dtype", "size_bytes", "context_length", "quantization"}


def run_cli(*args: str, env_store: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "WORKBENCH_STORE": env_store}
    proc = subprocess.run([sys.executable, "-m", "workbench.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def mixed_store(tmp_path, tiny_models, tiny_root, seeded_root):
    user = tmp_path / "user"
    shutil.copytree(tiny_models["llama"], user / "broken-one")
    (user / "broken-one" / "config.json").write_text("{")
    shutil.copytree(tiny_models["gpt2"], user / "pickled")
    (user / "pickled" / "model.safetensors").rename(user / "pickled" / "pytorch_model.bin")
    return os.pathsep.join(map(str, [user, tiny_root, seeded_root]))


def test_store_list_json_contract(mixed_store, tiny_models):
    proc = run_cli("store", "list", "--json", env_store=mixed_store)
    items = json.loads(proc.stdout)
    by_name = {i["name"]: i for i in items}
    for item in items:
        assert CONTRACT_FIELDS <= set(item)
    assert by_name["broken-one"]["status"] == "broken"
    assert "config.json" in by_name["broken-one"]["problem"]
    assert by_name["pickled"]["status"] == "unsafe"
    assert by_name["pickled"]["format"] == "pickle"
    assert by_name["SmolLM2-135M-Instruct"]["params"] == 134_515_008
    assert by_name["SmolLM2-135M-Instruct"]["writable"] is False
    assert by_name["broken-one"]["writable"] is True


def test_store_table_and_inspect(mixed_store):
    table = run_cli("store", "list", env_store=mixed_store).stdout
    assert "SmolLM2-135M-Instruct" in table
    assert "Problems:" in table
    assert "broken-one" in table
    doc = json.loads(run_cli("store", "inspect", "SmolLM2-135M-Instruct", "--json", env_store=mixed_store).stdout)
    est = doc["estimate"]
    assert set(est) >= {"float32", "bfloat16", "int8", "nf4", "kv_cache_bytes_per_1k_tokens"}
    assert est["float32"] > est["bfloat16"] > est["int8"] > est["nf4"] > 0
    assert any(f["device"] == "cpu" for f in doc["fits"])
    human = run_cli("store", "inspect", "SmolLM2-135M-Instruct", env_store=mixed_store).stdout
    # A dense model: no expert lines (they would read "Shared experts: 0").
    assert ("Parameters:" in human, "Shared experts" in human, "Active params" in human) == (True, False, False)


def test_errors_are_one_line_and_nonzero(mixed_store):
    proc = run_cli("store", "inspect", "../../etc", env_store=mixed_store, check=False)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1
    assert "../../etc" in proc.stderr
    proc = run_cli("store", "inspect", "nope", "--json", env_store=mixed_store, check=False)
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["error"] == "ModelNotFoundError"


def test_import_then_delete_plan(mixed_store, tiny_models, tmp_path):
    run_cli("store", "import", str(tiny_models["qwen2"]), "--name", "q", env_store=mixed_store)
    user = Path(mixed_store.split(os.pathsep)[0])
    assert (user / "q" / "config.json").is_file()
    plan = json.loads(run_cli("store", "delete", "q", "--json", env_store=mixed_store).stdout)
    assert plan["deleted"] is False
    assert (user / "q").exists()
    run_cli("store", "delete", "q", "--yes", env_store=mixed_store)
    assert not (user / "q").exists()
    proc = run_cli("store", "delete", "tiny-llama", env_store=mixed_store, check=False)
    assert proc.returncode == 1
    assert "read-only" in proc.stderr


def test_devices_json_on_this_machine(mixed_store):
    """The real path: no NVIDIA driver here, so the CPU alone, with the reason."""
    doc = json.loads(run_cli("devices", "--json", env_store=mixed_store).stdout)
    names = [d["name"] for d in doc["devices"]]
    assert "cpu" in names
    cpu = doc["devices"][names.index("cpu")]
    assert cpu["memory_total_bytes"] > cpu["memory_free_bytes"] > 0
    if not doc["nvml"]["available"]:
        assert names == ["cpu"]
        assert doc["no_gpu_reason"]


def test_a_hostile_folder_name_in_a_shared_root_reaches_no_terminal_as_escapes() -> None:
    """Another user names a folder with terminal escapes (retitle, erase the line, colour): every
    text the command prints for people shows them escaped (cli/_output.py printable)."""
    from multiuser import OTHER, require_root, run_as, shared_tmp, sticky_folder

    require_root()
    evil = "llama\x1b]0;PWNED\x07\x1b[2K\x1b[1A\x1b[31mfake\n  other-model  safetensors  ok"

    def plant(root: str) -> None:
        folder = Path(root) / evil
        folder.mkdir()
        (folder / "config.json").write_text("{")
        (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")

    with shared_tmp() as base:
        root = sticky_folder(base / "team-store")
        run_as(OTHER, plant, str(root))
        listing = run_cli("store", "list", env_store=str(root))
        inspect = run_cli("store", "inspect", evil, env_store=str(root), check=False)
    for proc in (listing, inspect):
        assert "\x1b" not in proc.stdout + proc.stderr
    # A newline in the name makes no line of its own (no fake "ok" row).
    assert not [line for line in listing.stdout.splitlines() if line.lstrip().startswith("other-model")]
    assert "llama\\x1b]0;PWNED\\x07" in listing.stdout
    assert "Problems:" in listing.stdout
    assert "llama\\x1b" in inspect.stdout + inspect.stderr


def test_printable_keeps_only_what_it_is_told_to() -> None:
    from workbench.cli._output import printable

    assert printable("a\nb\x1b[2Kc\td") == "a\nb\\x1b[2Kc\\td"
    assert printable("a\nb\tc", keep="\n\t") == "a\nb\tc"
    assert printable("é <b>", keep="") == "é <b>"
