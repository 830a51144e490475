"""spandrel's ESRGAN-family modules (what ComfyUI and chaiNNer run upscaler models with) as the reference the
studio's MLX networks are checked against.

spandrel's package __init__ imports every architecture it knows, two of which need torchvision (not installed for
the tests: launch.py's TEST_WITHOUT_DEPENDENCIES); the ESRGAN and Compact architectures do not, so they are imported
with the package's folder registered and its __init__ not run.
"""

import importlib.util
import sys
import types
from pathlib import Path

import torch


def _spandrel_package() -> None:
    if "spandrel" in sys.modules:
        return
    spec = importlib.util.find_spec("spandrel")
    package = types.ModuleType("spandrel")
    package.__path__ = [str(Path(spec.submodule_search_locations[0]))]
    sys.modules["spandrel"] = package


_spandrel_package()
from spandrel.architectures.Compact import CompactArch  # noqa: E402
from spandrel.architectures.ESRGAN import ESRGANArch  # noqa: E402


def reference_module(state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The module spandrel builds from a state dict (its architecture detected as spandrel detects it), float32."""
    for arch in (ESRGANArch(), CompactArch()):
        if arch.detect(state_dict):
            return arch.load(state_dict).model.float().eval()
    raise ValueError("spandrel knows no ESRGAN-family architecture with these weights")
