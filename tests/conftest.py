"""Fixtures shared by every test.

Expensive things are built once per session: the tiny random models, and the
embedded SmolLM2 model seeded by ``make test`` (or, when pytest runs on its own,
seeded once into a session folder). Every test gets its own empty user store and
cache through the environment, so nothing touches the real ``~/.local/share``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tiny_models import ARCHS, build_tiny
from workbench.config import default_user_store, reset_settings

# Read before any fixture changes the environment: where `make test` seeded the model.
_ORIGINAL_USER_STORE = Path(
    (os.environ.get("WORKBENCH_STORE") or str(default_user_store())).split(os.pathsep)[0]
).expanduser()

# The fakes' fixtures (fake_nvml, no_nvml_driver, clean_devices, no_fp4_backend) for every folder;
# none is autouse, so a test gets one only by asking for it.
pytest_plugins = ["fakes.fixtures"]

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


@pytest.fixture(autouse=True)
def isolated_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty writable user store and a private cache for each test."""
    user = tmp_path / "user-store"
    monkeypatch.setenv("WORKBENCH_STORE", str(user))
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path / "cache"))
    # GPU leases are machine-wide by design: a test's leases stay in its own folder.
    monkeypatch.setenv("WORKBENCH_LEASE_DIR", str(tmp_path / "leases"))
    # So is the endpoint registry (engines `workbench serve` started).
    monkeypatch.setenv("WORKBENCH_ENDPOINTS_FILE", str(tmp_path / "endpoints.json"))
    # And the Jupyter runtime folder, where each process publishes what it holds (runtime/holdings.py).
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
    monkeypatch.delenv("WORKBENCH_IDLE_UNLOAD_S", raising=False)
    reset_settings()
    yield user
    from workbench.devices.leases import reset_lease_book

    reset_lease_book()
    reset_settings()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random models, one per architecture plus a sharded llama, in one read-only-ish folder.

    Tests must not modify these folders; copy one into ``tmp_path`` to damage it.
    """
    root = tmp_path_factory.mktemp("tiny-shared")
    models = {arch: build_tiny(arch, root / f"tiny-{arch}") for arch in ARCHS}
    models["llama-sharded"] = build_tiny("llama", root / "tiny-llama-sharded", sharded=True, seed=1)
    return models


@pytest.fixture(scope="session")
def tiny_root(tiny_models: dict[str, Path]) -> Path:
    """The folder holding every tiny model: use it as a shared (read-only) store root."""
    return next(iter(tiny_models.values())).parent


@pytest.fixture(scope="session")
def seeded_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of the seeded SmolLM2-135M-Instruct (bfloat16 safetensors).

    ``make test`` seeds it into the user's store before pytest starts; when pytest
    runs on its own and it is missing, it is seeded once into a session folder.
    """
    from workbench.store import ModelStore
    from workbench.store.importer import DEFAULT_MODEL_NAME, seed

    existing = _ORIGINAL_USER_STORE / DEFAULT_MODEL_NAME
    if (existing / "config.json").is_file():
        return existing
    root = tmp_path_factory.mktemp("seeded-store")
    entry = seed(ModelStore([root], cache_path=None))
    return entry.path


@pytest.fixture(scope="session")
def seeded_root(seeded_model: Path) -> Path:
    """The store root holding the seeded model (use it as a read-only shared root)."""
    return seeded_model.parent


@pytest.fixture(scope="session")
def vlm_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store root of tiny vision-language models (tests/tiny_multimodal.py): tiny-llava, tiny-qwen2-vl,
    tiny-gemma3."""
    from tiny_multimodal import build_vlm

    root = tmp_path_factory.mktemp("vlms")
    build_vlm("llava", root / "tiny-llava")
    build_vlm("qwen2_vl", root / "tiny-qwen2-vl")
    build_vlm("gemma3", root / "tiny-gemma3")
    return root
