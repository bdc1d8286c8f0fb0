"""The generators by name, and the choice of one for a job (``auto`` takes Wav2Lip where its
weights resolve, else the weights-free baseline, and says why)."""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from pipeline.errors import WeightsUnavailable
from pipeline.generators.base import Generator
from pipeline.options import RunOptions

log = logging.getLogger(__name__)


def select_generator(options: RunOptions) -> tuple[Generator, str]:
    """Return the generator for ``options.model`` and a sentence saying why it was chosen.

    ``wav2lip`` and ``latentsync`` fail with WeightsUnavailable when their weights do not
    resolve; ``auto`` (which never picks LatentSync) falls back to the weights-free baseline
    and says why in the reason.
    """
    if options.model in ("baseline", "passthrough"):
        return get_generator(options.model), f"{options.model} requested"
    if options.model == "latentsync":  # never chosen by "auto": a diffusion model, slow without a GPU
        return get_generator("latentsync", device=options.device, steps=options.steps, guidance=options.guidance,
                             seed=options.seed, silence_keep=options.silence_keep), "latentsync requested"
    try:
        gen = get_generator("wav2lip", checkpoint=options.checkpoint, device=options.device,
                            pads=options.pads, batch_size=options.batch_size)
    except WeightsUnavailable as exc:
        if options.model == "wav2lip":
            raise
        log.info("auto: falling back to the baseline: %s", exc)
        return get_generator("baseline"), f"baseline (no Wav2Lip weights): {exc}"
    reason = "wav2lip requested" if options.model == "wav2lip" else "auto: Wav2Lip weights found"
    return gen, reason


Factory = Callable[..., Generator]
_factories: dict[str, Factory] = {}
_lock = threading.Lock()
# name -> (module, factory): a generator's module is imported on its first use, so a job of
# one model never imports another's (torch for wav2lip, diffusers for latentsync)
LAZY_MODULES = {
    "passthrough": ("pipeline.generators.passthrough", "PassthroughGenerator"),
    "baseline": ("pipeline.generators.baseline", "BaselineGenerator"),
    "wav2lip": ("pipeline.generators.wav2lip.generator", "make_wav2lip_generator"),
    "latentsync": ("pipeline.generators.latentsync.generator", "make_latentsync_generator"),
}


def register_generator(name: str, factory: Factory) -> None:
    """Make ``get_generator(name, **kw)`` call ``factory(**kw)``."""
    with _lock:
        _factories[name] = factory


def available_generators() -> list[str]:
    return sorted(set(_factories) | set(LAZY_MODULES))


def get_generator(name: str, **kw: Any) -> Generator:
    """A new generator ``name`` built with ``kw`` (generators share their heavy parts,
    models and trackers, per process themselves).

    A generator's module is imported on first use; when that module cannot be imported the
    error is a WeightsUnavailable naming why, so "auto" can fall back.
    Raises ValueError for an unknown name.
    """
    return _factory(name)(**kw)


def _factory(name: str) -> Factory:
    if name in LAZY_MODULES:
        module_name, attr = LAZY_MODULES[name]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise WeightsUnavailable(f"the {name} generator cannot be loaded here ({exc})") from exc
        factory = getattr(module, attr, None)
        if callable(factory):
            return factory
    with _lock:
        factory = _factories.get(name)
    if factory is None:
        raise ValueError(f"unknown generator {name!r}: choose one of {', '.join(available_generators())}")
    return factory
