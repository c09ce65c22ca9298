"""`workbench store inspect` cold (skeleton built, torch imported) and warm (skeleton results cached).

Seeds the embedded SmolLM2-135M-Instruct into a temporary store, then times
`workbench store inspect SmolLM2-135M-Instruct --json` in fresh processes: once with an
empty cache folder (cold), then five times with the cache it left (warm, median).
Prints both and their ratio. Issue 16 section 5's target: warm well under a second.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NAME = "SmolLM2-135M-Instruct"


def _run(env: dict[str, str], *args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "workbench.cli", *args], env=env, check=True, capture_output=True,
                   timeout=600)
    return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, WORKBENCH_STORE=str(Path(tmp) / "store"), WORKBENCH_CACHE_DIR=str(Path(tmp) / "c"))
        _run(env, "store", "seed")
        cold = []
        for i in range(3):  # each cold run gets an empty cache folder
            env["WORKBENCH_CACHE_DIR"] = str(Path(tmp) / f"cold{i}")
            cold.append(_run(env, "store", "inspect", NAME, "--json"))
        warm = [_run(env, "store", "inspect", NAME, "--json") for _ in range(5)]
        listing = [_run(env, "store", "list", "--json") for _ in range(3)]
    c, w, li = statistics.median(cold), statistics.median(warm), statistics.median(listing)
    print(f"store inspect cold {c:.2f} s, warm {w:.2f} s (x{c / w:.1f} faster); store list {li:.2f} s")


if __name__ == "__main__":
    main()
