"""``transformers serve``, behind the engine's API key: ``python -m workbench.serve.tf_launcher serve PATH ...``.

``transformers serve`` has no authentication, and on a shared machine any local user
can connect to a loopback port. This launcher runs transformers' own CLI in this
process (its ``serve`` command, its FastAPI app, its engine: nothing of the serving is
ours) after one change: the app it builds gets
:class:`~workbench.serve.auth.BearerKeyMiddleware`, with the key read from
``WORKBENCH_ENGINE_API_KEY`` and removed from the environment before any model code
runs. Without a key it refuses to start: an engine the workbench starts never serves
unauthenticated. (Where transformers builds its app is a bet on its internals, in
:mod:`workbench._transformers_compat`.)
"""

from __future__ import annotations

import os
import sys

from .engines import API_KEY_VARIABLES


def main(argv: list[str]) -> int:
    key = os.environ.pop(API_KEY_VARIABLES["transformers"], "")
    if not key:
        print(f"refusing to serve without an API key: set {API_KEY_VARIABLES['transformers']}", file=sys.stderr)
        return 2
    from .._transformers_compat import wrap_serve_app
    from .auth import BearerKeyMiddleware

    wrap_serve_app(lambda app: app.add_middleware(BearerKeyMiddleware, key=key))
    from transformers.cli.transformers import main as transformers_main

    sys.argv = ["transformers", *argv]
    result = transformers_main()
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
