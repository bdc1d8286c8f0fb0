"""Where the SyncNet weights are: ``pipeline.weights.resolve(SYNCNET)``, without torch.

Kept apart from :mod:`eval.syncnet` so that scoring imports torch only once a checkpoint
has resolved (importing torch costs about a second of CPU; without weights it is not needed).
"""

from __future__ import annotations

import os
import threading

from pipeline.errors import WeightsUnavailable
from pipeline.weights import SYNCNET, ResolvedWeights, hub_offline, resolve

_hub_failed = threading.Event()  # a Hub download failed in this process: not retried


def resolve_syncnet(checkpoint: str | os.PathLike[str] | None = None) -> ResolvedWeights:
    """The SyncNet weights file: ``checkpoint`` when given, else the shared resolution order.

    Local places are searched on every call (a file dropped into the models folder is seen
    at once); a failed Hub download is remembered for the process, so an unreachable Hub
    costs its timeout once, not on every job. Raises WeightsUnavailable / WeightsInvalid.
    """
    if checkpoint is not None:
        return resolve(SYNCNET, checkpoint)
    if _hub_failed.is_set() and not hub_offline():
        try:
            return resolve(SYNCNET, allow_download=False)
        except WeightsUnavailable as exc:
            raise WeightsUnavailable(f"{exc} (a Hub download already failed in this process; "
                                     "restart to retry)") from None
    try:
        return resolve(SYNCNET)
    except WeightsUnavailable:
        if not hub_offline():
            _hub_failed.set()
        raise
