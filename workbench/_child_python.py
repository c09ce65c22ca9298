"""How the workbench starts Python children (engines, the chat-template worker) on a shared machine.

``python -m MODULE`` puts the working directory first on the child's ``sys.path``: started from a
folder another user can write (``/tmp``, a team folder a notebook sits in), a planted
``llama_cpp/`` or ``workbench/`` package would run as this user, with the engine's API key in its
environment. Children therefore get ``-P`` (Python 3.11+: no unsafe path first) and
``PYTHONSAFEPATH=1`` (for their own children), and are started in a folder of this user's
(:func:`workbench.serve.process.start`, :mod:`workbench.chat_template`).
"""

from __future__ import annotations

import sys

#: Set for every Python child: no working directory or script folder first on its ``sys.path``.
SAFE_PATH_ENV = {"PYTHONSAFEPATH": "1"}


def python_module_argv(module: str, *args: str) -> list[str]:
    """``[python, "-P", "-m", module, *args]`` (``-P`` only where the interpreter knows it: 3.11+)."""
    return [sys.executable, *(["-P"] if sys.version_info >= (3, 11) else []), "-m", module, *args]
