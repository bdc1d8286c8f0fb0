"""SyncNet, the "S" model of joonson/syncnet_python, and its weights.

The architecture below is syncnet_python's ``SyncNetModel.S`` layer for layer, so the
published ``syncnet_v2.model`` (a plain ``{name: tensor}`` state_dict) loads into it with
``strict=True``. Weights are found by ``pipeline.weights.resolve(SYNCNET, ...)``, the same
resolution the generator uses: an explicit path or ``$LIPSYNC_SYNCNET_CHECKPOINT``, the
models folder (``syncnet_v2.model``), the Hugging Face Hub cache, then a Hub download of
``ByteDance/LatentSync-1.5`` / ``auxiliary/syncnet_v2.model``.

Nothing here ever invents weights: when no file resolves, callers get WeightsUnavailable
and report LSE as null with the reason.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict

import torch
from torch import nn

from pipeline.errors import WeightsInvalid, WeightsUnavailable
from pipeline.weights import ModelCache, ResolvedWeights

__all__ = ["SyncNetS", "cached_syncnet", "load_syncnet"]

log = logging.getLogger(__name__)

EMBED_DIM = 1024  # syncnet_python's num_layers_in_fc_layers
MFCC_BINS = 13  # python_speech_features.mfcc default numcep
MAX_MODELS = 2  # loaded checkpoints kept per process (normally one)


def _bn_relu_conv2d(cin: int, cout: int, kernel: tuple[int, int], padding: tuple[int, int],
                    stride: tuple[int, int] = (1, 1)) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel_size=kernel, stride=stride, padding=padding),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _bn_relu_conv3d(cin: int, cout: int, kernel: tuple[int, int, int], padding: tuple[int, int, int] | int,
                    stride: tuple[int, int, int] = (1, 1, 1)) -> list[nn.Module]:
    return [nn.Conv3d(cin, cout, kernel_size=kernel, stride=stride, padding=padding),
            nn.BatchNorm3d(cout), nn.ReLU(inplace=True)]


def _head() -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, EMBED_DIM))


class SyncNetS(nn.Module):
    """Audio and lip embeddings of syncnet_python's S model (module names match its state_dict).

    ``forward_aud``: (B, 1, 13, 20) MFCC windows -> (B, 1024).
    ``forward_lip``: (B, 3, 5, 224, 224) BGR 0-255 float frames -> (B, 1024).
    """

    def __init__(self) -> None:
        super().__init__()
        self.netcnnaud = nn.Sequential(
            *_bn_relu_conv2d(1, 64, (3, 3), (1, 1)),
            nn.MaxPool2d(kernel_size=(1, 1), stride=(1, 1)),
            *_bn_relu_conv2d(64, 192, (3, 3), (1, 1)),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(1, 2)),
            *_bn_relu_conv2d(192, 384, (3, 3), (1, 1)),
            *_bn_relu_conv2d(384, 256, (3, 3), (1, 1)),
            *_bn_relu_conv2d(256, 256, (3, 3), (1, 1)),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),
            nn.Conv2d(256, 512, kernel_size=(5, 4), padding=(0, 0)),
            nn.BatchNorm2d(512),
            nn.ReLU(),
        )
        self.netfcaud = _head()
        self.netfclip = _head()
        self.netcnnlip = nn.Sequential(
            *_bn_relu_conv3d(3, 96, (5, 7, 7), 0, stride=(1, 2, 2)),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            *_bn_relu_conv3d(96, 256, (1, 5, 5), (0, 1, 1), stride=(1, 2, 2)),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            *_bn_relu_conv3d(256, 256, (1, 3, 3), (0, 1, 1)),
            *_bn_relu_conv3d(256, 256, (1, 3, 3), (0, 1, 1)),
            *_bn_relu_conv3d(256, 256, (1, 3, 3), (0, 1, 1)),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            *_bn_relu_conv3d(256, 512, (1, 6, 6), 0),
        )

    def forward_aud(self, x: torch.Tensor) -> torch.Tensor:
        mid = self.netcnnaud(x)  # (B, 512, 1, 1)
        return self.netfcaud(mid.view(mid.size(0), -1))  # (B, 512) -> (B, 1024)

    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:
        mid = self.netcnnlip(x)  # (B, 512, 1, 1, 1)
        return self.netfclip(mid.view(mid.size(0), -1))  # (B, 512) -> (B, 1024)


def load_syncnet(path: str | os.PathLike[str], *, device: str = "cpu") -> SyncNetS:
    """Build SyncNetS from a plain state_dict file (``syncnet_v2.model``), in eval mode.

    Raises WeightsUnavailable when the file is missing and WeightsInvalid when it is not a
    state_dict of this model (unreadable, wrong keys or shapes).
    """
    path = os.fspath(path)
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise WeightsUnavailable(f"SyncNet checkpoint {path} is not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle, zip and torch errors all mean "not a checkpoint"
        raise WeightsInvalid(f"SyncNet checkpoint {name} could not be read as a PyTorch state_dict "
                             f"({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsInvalid(f"SyncNet checkpoint {name} is not a plain state_dict of tensors "
                             f"(syncnet_v2.model format)")
    model = SyncNetS()
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = [f"{label}: {', '.join(items[:4])}{', ...' if len(items) > 4 else ''}"
                 for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                 if items]
        raise WeightsInvalid(f"SyncNet checkpoint {name} does not match syncnet_python's S model ("
                             + "; ".join(parts) + ")")
    model.load_state_dict(OrderedDict((k, state[k]) for k in expected), strict=True)
    return model.to(device).eval()


_models: ModelCache[SyncNetS] = ModelCache(MAX_MODELS)


def cached_syncnet(weights: ResolvedWeights, *, device: str = "cpu") -> SyncNetS:
    """One loaded model per (path, sha256, device) per process; at most MAX_MODELS kept."""
    return _models.get((weights.path, weights.sha256, device),
                       lambda: load_syncnet(weights.path, device=device))
