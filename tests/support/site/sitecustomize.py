"""Python runs this at start-up in every interpreter the test suite starts.

tests/conftest.py puts this folder (which holds nothing else) first on
PYTHONPATH, so torchrun ranks, `chatbaker` subprocesses and the forkserver
behind the worker pools (tests/support/forkserver.py) run it, and their own
children inherit the variable. With `CHATBAKER_DEVICE_RULES=nccl` it
installs NCCL's device rules (tests/support/device_rules.py) the moment the
process imports `chatbaker_megatron.platform.device`: before anything of the
project computes or picks a device, and never in a process that does not use
the platform (the rules import torch, seconds of CPU in a process that has
no other use for it). A sitecustomize rather than a `.pth` file because it
needs nothing installed into the environment; Python imports only the first
`sitecustomize` on its path, and the project's venv has none of its own.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

_TRIGGER = "chatbaker_megatron.platform.device"
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))


def _install_device_rules() -> None:
    # The working tree on the path just for this import: `tests` then resolves
    # through its own package path, and the process's path stays as it was.
    sys.path.insert(0, _ROOT)
    try:
        from tests.support import device_rules
    finally:
        sys.path.remove(_ROOT)
    device_rules.install()


class _AfterPlatformImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: lets the usual finders load the platform's device module, then installs."""

    def find_spec(
        self, fullname: str, path: object, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _TRIGGER:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        exec_module = spec.loader.exec_module

        def exec_module_then_install(module: object) -> None:
            exec_module(module)
            _install_device_rules()

        spec.loader.exec_module = exec_module_then_install
        return spec


if os.environ.get("CHATBAKER_DEVICE_RULES") == "nccl":
    sys.meta_path.insert(0, _AfterPlatformImport())
