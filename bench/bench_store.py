"""How long `workbench store list` takes on a 300-model store, cold (no index) and warm.

Builds tiny random models once, then hard-links them into 300 entries (mixed
single-file, sharded, GGUF-free) in a temporary root, and times the listing in a
fresh subprocess each time, as a user running the command would see it.

    python bench/bench_store.py [--models 300] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def build(root: Path, n: int) -> None:
    from tiny_models import build_tiny

    proto = root.parent / "proto"
    sources = [build_tiny("llama", proto / "a"), build_tiny("llama", proto / "b", sharded=True),
               build_tiny("gpt2", proto / "c")]
    for i in range(n):
        src = sources[i % len(sources)]
        shutil.copytree(src, root / f"model-{i:03d}", copy_function=os.link)


def time_list(root: Path, cache: Path) -> float:
    env = {**os.environ, "WORKBENCH_STORE": str(root), "WORKBENCH_CACHE_DIR": str(cache)}
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "workbench.cli", "store", "list", "--json"], env=env,
                         capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - t
    assert len(json.loads(out.stdout)) > 0
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "store"
        build(root, args.models)
        cold, warm = [], []
        for i in range(args.repeat):
            cache = Path(tmp) / f"cache-{i}"
            cold.append(time_list(root, cache))
            warm.append(time_list(root, cache))
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import workbench"], check=True)
        bare_python = time.perf_counter() - t
    result = {"models": args.models, "cold_s_median": statistics.median(cold),
              "warm_s_median": statistics.median(warm), "import_workbench_process_s": bare_python}
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:28} {v:.3f}" if isinstance(v, float) else f"{k:28} {v}")


if __name__ == "__main__":
    main()
