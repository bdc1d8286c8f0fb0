"""Wav2Lip test helpers: random checkpoints in the published format, and the `lipsync`
package (an independent Wav2Lip implementation from PyPI) as a reference.

No real Wav2Lip weights can be downloaded here, so every neural test uses a randomly
initialised network saved exactly as the published ``wav2lip_gan.pth`` is laid out
(``{"state_dict": {"module.<name>": tensor}, "optimizer": ..., "global_step": ...}``) and
loaded through the real loading code. Import the fixtures into a test module by name.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from required import skip_or_fail
from pipeline.generators.wav2lip.model import Wav2Lip, expected_shapes, save_checkpoint

SEED = 1234


def random_wav2lip(seed: int = SEED) -> Wav2Lip:
    """A Wav2Lip with random conv weights AND random BatchNorm statistics and affines, so
    that a loader that dropped or mixed up any tensor would change the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # PyTorch's own init, deterministic too
        model = Wav2Lip()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:  # conv kernels: keep PyTorch's fan-in scale, new draw
                bound = float(p.abs().max())
                p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) * bound)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.8 + 0.4 * torch.rand(n, generator=gen))
                m.bias.copy_(0.05 * torch.randn(n, generator=gen))
                m.running_mean.copy_(0.05 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.8 + 0.4 * torch.rand(n, generator=gen))
                m.num_batches_tracked.fill_(1000)
    return model.eval()


def published_extras() -> dict[str, object]:
    """The other top-level entries of a published Wav2Lip checkpoint (values are dummies)."""
    return {"optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
            "global_step": 253000, "global_epoch": 4}


def tiny_state_dict(prefix: str = "module.") -> OrderedDict[str, torch.Tensor]:
    """A state_dict of the right keys and shapes whose tensors are broadcast views of one
    number: torch.save writes one element per tensor, so a file takes kilobytes, not 145 MB.
    For the loader's rejection tests, which never get as far as running the network."""
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, shape in expected_shapes().items():
        one = torch.zeros((), dtype=torch.long if key.endswith("num_batches_tracked") else torch.float32)
        state[prefix + key] = one.expand(shape)
    return state


@pytest.fixture(scope="session")
def wav2lip_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weights checkpoint in the published format (``module.`` keys, optimizer...)."""
    path = tmp_path_factory.mktemp("wav2lip") / "wav2lip_gan.pth"
    save_checkpoint(random_wav2lip(), path, extra=published_extras())
    return path


def _lipsync_folders() -> list[str]:
    """Where the `lipsync` package lies, also while a stand-in for it is in sys.modules."""
    loaded = sys.modules.get("lipsync")
    if loaded is not None and getattr(loaded, "__path__", None):
        return list(loaded.__path__)
    spec = importlib.util.find_spec("lipsync")
    return list(spec.submodule_search_locations or []) if spec is not None else []


@pytest.fixture(scope="session")
def lipsync_pkg() -> types.SimpleNamespace:
    """The `lipsync` package's Wav2Lip model, audio code and inference class.

    It is installed with --no-deps: its ``__init__`` imports PyAV and face_alignment, which
    are absent (and only used for reading video files and detecting faces, which these
    tests do not call). The package is therefore imported under an empty parent module
    pointing at its folder, and ``av`` / ``face_alignment`` are stood in for by empty
    modules while ``lipsync.lipsync`` is imported; every function the tests call runs as
    shipped. sys.modules is left as it was found.
    """
    folders = _lipsync_folders()
    if not folders:
        skip_or_fail("the `lipsync` package is not installed (requirements-dev.txt, --no-deps)")
    before = set(sys.modules)
    with pytest.MonkeyPatch.context() as mp:
        pkg = types.ModuleType("lipsync")
        pkg.__path__ = folders
        mp.setitem(sys.modules, "lipsync", pkg)
        for name in [n for n in sys.modules if n.startswith("lipsync.")]:
            mp.delitem(sys.modules, name)
        for absent in ("av", "face_alignment"):
            if importlib.util.find_spec(absent) is None:
                mp.setitem(sys.modules, absent, types.ModuleType(absent))
        mods = [importlib.import_module(n) for n in ("lipsync.models.wav2lip", "lipsync.audio", "lipsync.lipsync")]
    for name in set(sys.modules) - before:  # what the imports added; the modules live on in `mods`
        if name.startswith("lipsync."):
            del sys.modules[name]
    return types.SimpleNamespace(Wav2Lip=mods[0].Wav2Lip, audio=mods[1], LipSync=mods[2].LipSync)
