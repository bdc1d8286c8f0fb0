"""Choosing the generator for a job: ``auto`` takes Wav2Lip where its weights resolve."""

from __future__ import annotations

import logging

from pipeline.errors import WeightsUnavailable
from pipeline.generators import Generator, get_generator
from pipeline.options import RunOptions

log = logging.getLogger(__name__)


def select_generator(options: RunOptions) -> tuple[Generator, str]:
    """Return the generator for ``options.model`` and a sentence saying why it was chosen.

    ``wav2lip`` fails with WeightsUnavailable when no checkpoint resolves; ``auto`` falls
    back to the weights-free baseline and says why in the reason.
    """
    if options.model in ("baseline", "passthrough"):
        return get_generator(options.model), f"{options.model} requested"
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
