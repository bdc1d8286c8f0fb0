"""Drawing an open (or closed) mouth into a frame: the baseline generator's renderer.

Work happens in the mouth's own coordinates: u along the line between the inner lip
corners (centred between them), v perpendicular to it, pointing down the face. Per
column u the inner edge of the upper lip y_u(u) stays where it is; the new gap g_t(u)
below it (a lens profile scaled by the opening) is painted as the dark inside of a mouth,
and everything under the gap, the lower lip down to the chin, is displaced so that the
original lower inner lip edge y_l(u) lands on y_u + g_t, tapering linearly to no
displacement at the chin. A mouth that is open in the source and should be closed is
therefore shut by the same warp (g_t = 0 pulls the lower lip up to the upper one).
Outside the inner corners and below the chin nothing moves, so the patch is the original
image at its borders and the feathered alpha only hides resampling.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.generators.blend import Patch, feather_mask
from pipeline.faces.types import Mouth

MAX_OPEN = 0.42  # inner-lip gap at full opening, as a fraction of the outer mouth width
PROFILE_POWER = 0.6  # lens shape of the gap across the mouth: (1 - x^2) ** power
MARGIN = 0.15  # patch margin around the warped region (room for the feather), fraction of mouth width
MIN_MOUTH_PX = 6.0  # px: inner corners closer than this give no patch
INSIDE_BGR = (34.0, 28.0, 62.0)  # the dark inside of an open mouth
INSIDE_SHADE = 0.45  # how much darker the middle of the opening is than its rim
TEETH_BGR = (178.0, 186.0, 196.0)  # upper teeth, seen under the upper lip
TEETH_DEPTH = 0.22  # fraction of the gap the upper teeth cover, at most
TEETH_SPAN = 0.55  # fraction of the mouth width (from the centre) the teeth cover
TUCK = 0.08  # an open source mouth is closed this much further (fraction of mouth width), at most
    # its own opening: landmarks sit a pixel or two inside the dark gap
CURVE_SAMPLES = 33  # samples of each smoothed lip curve
TABLE_SIZE = 257  # samples across the mouth of everything that depends on the position along it


def _frame_axes(mouth: Mouth) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centre, e_u, e_v): origin and unit axes of the mouth's coordinates, in pixels."""
    left, right = mouth.left.astype(np.float64), mouth.right.astype(np.float64)
    d = right - left
    angle = math.atan2(d[1], d[0])
    e_u = np.array([math.cos(angle), math.sin(angle)])
    e_v = np.array([-math.sin(angle), math.cos(angle)])
    return (left + right) / 2, e_u, e_v


def _curve(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) samples of a smooth curve through a lip's points, sorted by u, for np.interp.

    A cubic Hermite curve with central-difference slopes (a Catmull-Rom spline in function
    form): straight chords between the landmarks would cut inside the rounded edge of an
    open mouth and leave slivers of it visible when it is closed.
    """
    order = np.argsort(points[:, 0])
    u, v = points[order, 0], points[order, 1]
    u = np.maximum.accumulate(u + np.arange(len(u)) * 1e-3)  # strictly increasing
    if len(u) < 3:
        return u, v
    slope = np.empty_like(v)
    slope[1:-1] = (v[2:] - v[:-2]) / (u[2:] - u[:-2])
    slope[0], slope[-1] = (v[1] - v[0]) / (u[1] - u[0]), (v[-1] - v[-2]) / (u[-1] - u[-2])
    dense = np.linspace(u[0], u[-1], CURVE_SAMPLES)
    k = np.clip(np.searchsorted(u, dense, side="right") - 1, 0, len(u) - 2)  # segment of each sample
    du = u[k + 1] - u[k]
    t = (dense - u[k]) / du
    t2, t3 = t * t, t * t * t
    curve = ((2 * t3 - 3 * t2 + 1) * v[k] + (t3 - 2 * t2 + t) * du * slope[k]
             + (-2 * t3 + 3 * t2) * v[k + 1] + (t3 - t2) * du * slope[k + 1])
    return dense, curve


@functools.lru_cache(maxsize=256)
def _alpha(h: int, w: int, ramp_px: int) -> np.ndarray:
    """The feathered alpha of an (h, w) patch fading over ``ramp_px`` pixels; cached, read-only."""
    alpha = feather_mask(h, w, feather=min(0.45, ramp_px / max(1, min(h, w))))
    alpha.setflags(write=False)
    return alpha


@dataclass(frozen=True, eq=False)
class MouthGeometry:
    """Where and how one mouth is drawn: its axes and lip curves in mouth coordinates, the
    gap to draw and the patch box in pixels. Small and picklable: with the pixels of ``box``
    it is all :func:`draw_mouth` needs, so the drawing can run in another process."""

    centre: np.ndarray  # (2,) origin of the mouth's coordinates, px
    e_u: np.ndarray  # (2,) unit axis along the mouth
    e_v: np.ndarray  # (2,) unit axis down the face
    half: float  # half the inner-corner distance, px
    upper: tuple[np.ndarray, np.ndarray]  # (u, v) samples of the upper inner lip edge
    lower: tuple[np.ndarray, np.ndarray]  # (u, v) samples of the lower inner lip edge
    width: float  # mouth width, px
    chin_v: float  # v of the chin
    gap: float  # the new inner-lip gap at the mouth's centre, px
    margin: float  # px around the warped region
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 of the patch in the frame


def mouth_geometry(shape: tuple[int, ...], mouth: Mouth, opening: float) -> MouthGeometry | None:
    """The geometry of ``mouth`` opened to ``opening`` in a frame of ``shape`` (H, W, ...);
    None when the mouth is too small or lies outside the frame."""
    centre, e_u, e_v = _frame_axes(mouth)
    to_uv = np.stack([e_u, e_v])  # (2, 2): rows project onto u and v

    def uv(p: np.ndarray) -> np.ndarray:
        return (np.asarray(p, np.float64).reshape(-1, 2) - centre) @ to_uv.T  # (n, 2)

    half = float(np.linalg.norm(mouth.right - mouth.left)) / 2
    if 2 * half < MIN_MOUTH_PX:
        return None
    upper_u, upper_v = _curve(uv(mouth.upper_inner))
    lower_u, lower_v = _curve(uv(mouth.lower_inner))
    outer = uv(mouth.lower_outer)
    width = max(2 * half, float(outer[:, 0].max() - outer[:, 0].min()))
    chin_v = float(uv(mouth.chin)[0, 1])
    lowest = max(float(lower_v.max()), float(outer[:, 1].max()))
    chin_v = max(chin_v, lowest + 0.25 * width)  # a degenerate jaw: keep room below the lip
    gap = float(np.clip(opening, 0.0, 1.0)) * MAX_OPEN * width
    margin = MARGIN * width

    # patch box: the region from above the upper lip to the chin, grown by the margin
    corners_uv = np.array([[-half - margin, float(upper_v.min()) - margin],
                           [half + margin, float(upper_v.min()) - margin],
                           [-half - margin, chin_v + 0.5 * margin],
                           [half + margin, chin_v + 0.5 * margin]])
    corners = centre + corners_uv @ to_uv  # (4, 2) back to pixels
    fh, fw = shape[:2]
    x1, y1 = max(0, int(math.floor(corners[:, 0].min()))), max(0, int(math.floor(corners[:, 1].min())))
    x2, y2 = min(fw, int(math.ceil(corners[:, 0].max())) + 1), min(fh, int(math.ceil(corners[:, 1].max())) + 1)
    if x2 - x1 < 4 or y2 - y1 < 4:
        return None
    return MouthGeometry(centre=centre, e_u=e_u, e_v=e_v, half=half, upper=(upper_u, upper_v),
                         lower=(lower_u, lower_v), width=width, chin_v=chin_v, gap=gap, margin=margin,
                         box=(x1, y1, x2, y2))


def render_mouth(frame: np.ndarray, mouth: Mouth, opening: float) -> Patch | None:
    """A patch that shows ``mouth`` opened to ``opening`` (0 = closed, 1 = fully open).

    None when the mouth is too small or lies outside the frame.
    """
    g = mouth_geometry(frame.shape, mouth, opening)
    if g is None:
        return None
    x1, y1, x2, y2 = g.box
    return draw_mouth(frame[y1:y2, x1:x2], g)


def draw_mouth(region: np.ndarray, g: MouthGeometry) -> Patch:
    """The patch for ``g`` from ``region``: the frame's BGR pixels inside ``g.box``."""
    centre, e_u, e_v, half, width, chin_v, gap = g.centre, g.e_u, g.e_v, g.half, g.width, g.chin_v, g.gap
    (upper_u, upper_v), (lower_u, lower_v) = g.upper, g.lower
    x1, y1, x2, y2 = g.box
    ys, xs = np.mgrid[y1:y2, x1:x2].astype(np.float32)  # (h, w) pixel centres
    rel_x, rel_y = xs - np.float32(centre[0]), ys - np.float32(centre[1])
    u = rel_x * np.float32(e_u[0]) + rel_y * np.float32(e_u[1])  # (h, w)
    v = rel_x * np.float32(e_v[0]) + rel_y * np.float32(e_v[1])  # (h, w)

    # everything that depends on u alone, tabulated across the mouth and looked up per pixel
    grid = np.linspace(-half, half, TABLE_SIZE)  # (T,)
    x_grid = grid / half
    lens_t = np.power(np.maximum(0.0, 1.0 - x_grid * x_grid), PROFILE_POWER)
    y_u_t = np.interp(grid, upper_u, upper_v)
    g_o_t = np.maximum(0.0, np.interp(grid, lower_u, lower_v) - y_u_t)
    g_o_t += np.minimum(g_o_t, TUCK * width)
    g_t_t = gap * lens_t
    lens_t[[0, -1]] = g_o_t[[0, -1]] = g_t_t[[0, -1]] = 0.0  # nothing moves at or beyond the corners
    pos = (u + np.float32(half)) * np.float32((TABLE_SIZE - 1) / (2 * half))  # (h, w) table position
    idx = np.clip(np.rint(pos), 0, TABLE_SIZE - 1).astype(np.intp)  # (h, w)
    y_u = y_u_t.astype(np.float32)[idx]
    g_o = g_o_t.astype(np.float32)[idx]
    g_t = g_t_t.astype(np.float32)[idx]

    # below the new gap: source row v + (g_o - g_t) * (1 - t), t from the gap's bottom (0) to the chin (1)
    top = y_u + g_t
    t = np.clip((v - top) / np.maximum(np.float32(chin_v) - top, 1.0), 0.0, 1.0)
    shift = np.where(v >= top, (g_o - g_t) * (1.0 - t), 0.0).astype(np.float32)
    map_x = xs + shift * np.float32(e_v[0]) - np.float32(x1)
    map_y = ys + shift * np.float32(e_v[1]) - np.float32(y1)
    image = cv2.remap(region, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    # anti-aliased coverage of the new gap: one-pixel ramps at its upper and lower edges
    cover = np.clip(v - y_u + 0.5, 0.0, 1.0) * np.clip(top - v + 0.5, 0.0, 1.0) * (g_t > 0.25)  # (h, w)
    if gap >= 0.5:
        _paint_inside(image, cover, u=u, v=v, y_u=y_u, g_t=g_t, lens=lens_t.astype(np.float32)[idx], half=half)

    alpha = _alpha(y2 - y1, x2 - x1, max(1, round(0.8 * g.margin)))
    return Patch(box=(x1, y1, x2, y2), image=np.ascontiguousarray(image), alpha=alpha)


def _paint_inside(image: np.ndarray, cover: np.ndarray, *, u: np.ndarray, v: np.ndarray,
                  y_u: np.ndarray, g_t: np.ndarray, lens: np.ndarray, half: float) -> None:
    """Paint the open mouth's inside (shaded, with a band of teeth under the upper lip) into
    ``image`` where ``cover`` (h, w) says the new gap is, in place."""
    rows, cols = np.flatnonzero(cover.any(axis=1)), np.flatnonzero(cover.any(axis=0))
    if not len(rows):
        return
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))  # the gap's bounding box
    depth = np.clip((v[box] - y_u[box]) / np.maximum(g_t[box], 1e-3), 0.0, 1.0)  # 0 upper lip .. 1 lower
    ax = np.abs(u[box]) / np.float32(half)
    shade = 1.0 - INSIDE_SHADE * np.sin(np.pi * depth) * lens[box]  # darker in the middle
    inside_img = shade[:, :, None] * np.asarray(INSIDE_BGR, np.float32)  # (h', w', 3)
    teeth_w = np.where(depth < TEETH_DEPTH, np.clip((TEETH_SPAN - ax) / 0.15, 0.0, 1.0) * 0.8, 0.0)
    inside_img += teeth_w[:, :, None] * (np.asarray(TEETH_BGR, np.float32) - inside_img)
    region = image[box].astype(np.float32)
    region += cover[box][:, :, None] * (inside_img - region)
    image[box] = np.clip(region + 0.5, 0, 255).astype(np.uint8)
