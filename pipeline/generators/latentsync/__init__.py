"""LatentSync 1.5: a UNet compatible with the official checkpoints, its whisper-tiny audio
tokens, the fixed face mask, the VAE and DDIM sampling with classifier-free guidance.

Only relative imports inside this package, so it can move as a whole.
"""

from .config import UNetConfig, config_for_checkpoint, config_from_dict, load_config
from .unet import LatentSyncUNet, build_unet, load_unet

__all__ = ["LatentSyncUNet", "UNetConfig", "build_unet", "config_for_checkpoint", "config_from_dict",
           "load_config", "load_unet"]
