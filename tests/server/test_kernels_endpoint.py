"""``/workbench/api/kernels``: what each of the user's kernels (and other processes) holds, CPU loads included.

A real kernel started through the server's REST API loads tiny-llama twice on the CPU: the document
lists the kernel with its PID (the server's kernel manager's), its RSS and CPU use (psutil), and the
two models where the loads put them (the kernel's registry, printed by the kernel itself).
"""

from __future__ import annotations

import json
import os
from pathlib import Path


async def _run_in(km, code: str) -> str:
    """Run ``code`` in the kernel ``km``; its printed text."""
    client = km.client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=60)
        outputs: list[dict] = []
        reply = await client.execute_interactive(code, timeout=180, output_hook=outputs.append)
        errors = [m["content"] for m in outputs if m["msg_type"] == "error"]
        assert reply["content"]["status"] == "ok", errors
        return "".join(m["content"].get("text", "") for m in outputs if m["msg_type"] == "stream")
    finally:
        client.stop_channels()


async def test_kernels_lists_what_each_kernel_holds_on_the_cpu(jp_fetch, jp_serverapp) -> None:
    started = json.loads((await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": "python3"}))).body)
    try:
        km = jp_serverapp.kernel_manager.get_kernel(started["id"])
        empty = json.loads((await jp_fetch("workbench", "api", "kernels")).body)
        kernel = next(k for k in empty["kernels"] if k["kernel_id"] == started["id"])
        assert (kernel["pid"], kernel["models"]) == (km.provisioner.pid, [])
        assert kernel["rss_bytes"] > 10 * 2**20
        assert kernel["cpu_percent"] >= 0

        # Two CPU loads in the kernel (the case: "No model holds a GPU lease" while it held two).
        printed = await _run_in(km, (
            "import json\n"
            "from workbench.runtime import LoadSpec, get_registry\n"
            "reg = get_registry()\n"
            "ms = [reg.load(LoadSpec('tiny-llama', devices=('cpu',), dtype=d)) for d in ('float32', 'bfloat16')]\n"
            "print(json.dumps([[m.name, m.placement, m.footprint_bytes] for m in ms]))\n"))
        doc = json.loads((await jp_fetch("workbench", "api", "kernels")).body)
        kernel = next(k for k in doc["kernels"] if k["kernel_id"] == started["id"])
        assert [[m["name"], m["placement_bytes"], m["footprint_bytes"]] for m in kernel["models"]] == json.loads(printed)
        assert kernel["rss_bytes"] > sum(m["footprint_bytes"] for m in kernel["models"])

        await _run_in(km, "reg.unload_all()")
        after = json.loads((await jp_fetch("workbench", "api", "kernels")).body)
        assert next(k for k in after["kernels"] if k["kernel_id"] == started["id"])["models"] == []
    finally:
        await jp_fetch("api", "kernels", started["id"], method="DELETE")


def test_a_file_of_a_gone_process_or_another_pid_is_skipped(tmp_path: Path) -> None:
    """Holdings are read as untrusted: a dead PID's file and a file naming another PID are skipped
    (the other hostile kinds: tests/runtime/test_holdings_untrusted.py)."""
    import subprocess
    import sys

    import psutil

    from workbench.runtime.holdings import PREFIX, read_holdings

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    model = {"name": "m", "engine": "transformers", "precision": "bfloat16", "footprint_bytes": 1,
             "placement_bytes": {"cpu": 1}}
    started = psutil.Process().create_time()
    (tmp_path / f"{PREFIX}{gone.pid}.json").write_text(json.dumps({"pid": gone.pid, "started_s": started,
                                                                   "models": [model]}))
    (tmp_path / f"{PREFIX}{os.getppid()}.json").write_text(json.dumps({"pid": os.getpid(), "started_s": started,
                                                                       "models": [model]}))
    (tmp_path / f"{PREFIX}{os.getpid()}.json").write_text(json.dumps({"pid": os.getpid(), "started_s": started,
                                                                      "models": [model]}))
    assert read_holdings(tmp_path) == {os.getpid(): [model]}
