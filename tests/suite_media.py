"""Tiny suites for tests: 2 s face clips at 192 px with their own speech (the sync proxy needs
40 frames), a clip with no face, and the YAML file that names them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import media

N_FRAMES = 50  # 2 s at 25 fps
SIZE = 192  # px, square


def face_clip(folder: Path, name: str, seed: int) -> list[Path]:
    """``<name>.mp4`` (a face) and ``<name>.wav`` (speech) in ``folder``."""
    video = media.write_video(folder / f"{name}.mp4",
                              [media.face_frame(k + 9 * seed, size=SIZE) for k in range(N_FRAMES)])
    return [video, media.write_wav(folder / f"{name}.wav", media.speech_like(N_FRAMES / 25, seed=seed))]


def no_face_clip(folder: Path, name: str = "noface") -> list[Path]:
    """A grey noise clip with no face, and speech."""
    rng = np.random.default_rng(0)
    frames = [np.full((SIZE, SIZE, 3), 90, np.uint8) + rng.integers(0, 8, (SIZE, SIZE, 3), dtype=np.uint8)
              for _ in range(N_FRAMES)]
    video = media.write_video(folder / f"{name}.mp4", frames)
    return [video, media.write_wav(folder / f"{name}.wav", media.speech_like(N_FRAMES / 25, seed=7))]


def write_suite(folder: Path, pairs: list[str], settings: str = "[baseline, passthrough]",
                name: str = "tiny") -> Path:
    """``<name>.yaml`` naming ``<pair>.mp4`` / ``<pair>.wav`` for each pair, with ``settings``."""
    lines = [f"name: {name}", "pairs:"]
    for p in pairs:
        lines += [f"  - name: {p}", f"    video: {p}.mp4", f"    audio: {p}.wav"]
    lines.append(f"settings: {settings}")
    path = folder / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path
