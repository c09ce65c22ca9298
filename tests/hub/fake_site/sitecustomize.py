"""TEST-ONLY seam: fake NVML GPUs in every Python process a JupyterHub test starts.

The hub test puts this folder first on ``PYTHONPATH`` in the spawner's environment,
so user servers and their kernels run it at start-up. It does nothing unless
``WORKBENCH_TEST_FAKE_GPUS`` holds a JSON list of ``FakeGpu`` keyword dicts; then it
puts ``tests/fakes/fake_pynvml.py``'s fake in ``sys.modules["pynvml"]`` and fakes
``torch.cuda`` for the inventory, exactly as the in-process fixtures do. It is never
installed with the package.
"""

import os

if os.environ.get("WORKBENCH_TEST_FAKE_GPUS"):
    import importlib.util
    import json
    import sys

    _path = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "fakes", "fake_pynvml.py")
    _spec = importlib.util.spec_from_file_location("workbench_test_fake_pynvml", _path)
    _fakes = importlib.util.module_from_spec(_spec)
    sys.modules[_spec.name] = _fakes
    _spec.loader.exec_module(_fakes)
    _fake = _fakes.make_fake_nvml([_fakes.FakeGpu(**g) for g in json.loads(os.environ["WORKBENCH_TEST_FAKE_GPUS"])])
    sys.modules["pynvml"] = _fake.module

    from workbench.devices import torch_cuda as _torch_cuda

    _torch_cuda.cuda_module = _fakes._torch_patch(_fake.torch_cuda())
