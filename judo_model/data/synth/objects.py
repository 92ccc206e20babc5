"""The seven object categories: bottle, screw, hex nut, capsule, PCB, cable, washer (one part on a table)."""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from . import defects as surface_defects
from .catalog import Painting, Product, background, pick, registrar, surface_defect
from .surface import (
    Color,
    blend,
    draw_mask,
    erode,
    fractal_noise,
    irregular_blob,
    pixel_grid,
    rotate_points,
    smooth_noise,
    soften,
)

OBJECTS: dict[str, Product] = {}
product = registrar(OBJECTS)


def _radial(size: int, center: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Distance (px) and angle of every pixel about ``center`` given as ``(row, col)``."""
    yy, xx = pixel_grid(size)
    dy, dx = yy - center[0], xx - center[1]
    return np.hypot(dy, dx), np.arctan2(dy, dx)


def _jittered_center(pose: np.random.Generator, size: int, spread: float = 0.03) -> tuple[float, float]:
    return tuple(size / 2 + pose.uniform(-spread, spread, 2) * size)  # type: ignore[return-value]


@product("bottle", "object", ("broken_large", "broken_small", "contamination"))
def draw_bottle(pose: np.random.Generator, drng: np.random.Generator, size: int, defect: str | None) -> Painting:
    """A bottle seen from above: a glossy rim ring around the dark mouth."""
    rgb = background(pose, size, 0.3)
    center = _jittered_center(pose, size, 0.025)
    outer = size * pose.uniform(0.4, 0.44)
    inner = outer * pose.uniform(0.62, 0.68)
    dist, theta = _radial(size, center)
    t = np.clip((dist - inner) / (outer - inner), 0, 1)
    ridge = 0.45 + 0.4 * np.sin(np.pi * t) ** 2 + 0.25 * np.exp(-((t - 0.3) / 0.08) ** 2)
    sheen = 1.0 + 0.25 * np.cos(theta - pose.uniform(0, 2 * np.pi))
    glass = np.asarray((0.55, 0.58, 0.52), np.float32) * (ridge * sheen)[..., None]
    mouth = (0.06 + 0.14 * (dist / inner) ** 2)[..., None] * np.asarray((1.0, 1.0, 0.95), np.float32)
    ring = (dist >= inner) & (dist <= outer)
    blend(rgb, soften(ring, 0.8), glass)
    blend(rgb, soften(dist < inner, 0.8), mouth)
    painting = Painting(rgb, attributes={"color": "brown glass"})
    if defect in ("broken_large", "broken_small"):
        scale = 0.16 if defect == "broken_large" else 0.08
        at = drng.uniform(0, 2 * np.pi)
        edge_point = (center[0] + np.sin(at) * (inner + outer) / 2, center[1] + np.cos(at) * (inner + outer) / 2)
        chunk = irregular_blob(drng, size, edge_point, size * scale * drng.uniform(0.85, 1.15), roughness=0.5) & ring
        fracture = 0.5 + 0.35 * smooth_noise(drng, size, 48)
        blend(painting.rgb, soften(chunk, 0.6), np.asarray((0.72, 0.7, 0.62), np.float32) * fracture[..., None])
    elif defect == "contamination":
        painting.mask = surface_defects.paint_stain(painting.rgb, drng, erode(dist < inner, size // 40),
                                                    color=(0.62, 0.6, 0.52))
    return painting


@product("screw", "object", ("scratch_head", "thread_damage", "bent_tip"))
def draw_screw(pose: np.random.Generator, drng: np.random.Generator, size: int, defect: str | None) -> Painting:
    """A machine screw lying on a bright table: slotted head, threaded shank, pointed tip."""
    rgb = background(pose, size, 0.82, 0.02)
    center = _jittered_center(pose, size, 0.05)
    angle = pose.uniform(0, 2 * np.pi)
    half_len, half_w, head_r = size * 0.24, size * 0.045, size * 0.075
    axis, normal = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
    yy, xx = pixel_grid(size)
    px, py = xx - center[1], yy - center[0]
    along = px * axis[0] + py * axis[1]
    across = px * normal[0] + py * normal[1]
    tip_len = size * 0.07
    bend = np.deg2rad(drng.uniform(22, 35)) * drng.choice([-1, 1]) if defect == "bent_tip" else 0.0
    local_shank = np.array([[-half_len, -half_w], [half_len - tip_len, -half_w],
                            [half_len - tip_len, half_w], [-half_len, half_w]])
    tip_base = half_len - tip_len
    tip = np.array([[0, -half_w], [tip_len, 0], [0, half_w]])
    cos_b, sin_b = np.cos(bend), np.sin(bend)
    tip = np.stack([tip[:, 0] * cos_b - tip[:, 1] * sin_b + tip_base, tip[:, 0] * sin_b + tip[:, 1] * cos_b], 1)
    head_center = (center[1] - axis[0] * half_len, center[0] - axis[1] * half_len)
    shank = draw_mask(size, lambda d: d.polygon(rotate_points(local_shank, angle, (center[1], center[0])), fill=255))
    tip_mask = draw_mask(size, lambda d: d.polygon(rotate_points(tip, angle, (center[1], center[0])), fill=255))
    body = shank | tip_mask
    cylinder = np.sqrt(np.clip(1 - (across / half_w) ** 2, 0, 1))
    pitch = size * 0.028
    thread_phase = 2 * np.pi * (along + 0.35 * across) / pitch
    threads = 0.75 + 0.25 * np.sin(thread_phase)
    if defect == "thread_damage":
        start = drng.uniform(-half_len * 0.6, half_len * 0.3)
        flattened = (along > start) & (along < start + size * drng.uniform(0.06, 0.1))
        threads = np.where(flattened, 0.85 + 0.1 * smooth_noise(drng, size, 30), threads)
    steel = np.asarray((0.55, 0.56, 0.58), np.float32)
    blend(rgb, soften(body, 0.7), steel * (0.35 + 0.75 * cylinder * threads)[..., None])
    head = draw_mask(size, lambda d: d.ellipse([head_center[0] - head_r, head_center[1] - head_r,
                                                head_center[0] + head_r, head_center[1] + head_r], fill=255))
    head_dist = np.hypot(xx - head_center[0], yy - head_center[1]) / head_r
    blend(rgb, soften(head, 0.7), steel * (1.05 - 0.45 * head_dist ** 2)[..., None])
    slot_angle = pose.uniform(0, np.pi)
    slot = np.array([[-head_r * 0.8, 0.0], [head_r * 0.8, 0.0]])
    slot_pts = rotate_points(slot, slot_angle, head_center)
    slot_mask = draw_mask(size, lambda d: d.line(slot_pts, fill=255, width=max(2, size // 60)))
    blend(rgb, soften(slot_mask, 0.6) * 0.85, (0.12, 0.12, 0.13))
    painting = Painting(rgb, attributes={"color": "steel"})
    if defect == "scratch_head":
        painting.mask = surface_defects.paint_scratch(painting.rgb, drng, head & ~slot_mask, brighter=True,
                                                      length=(0.1, 0.14))
    return painting


def _hexagon(center: tuple[float, float], radius: float, angle: float) -> list[tuple[float, float]]:
    """Hexagon corners as PIL ``(x, y)`` points."""
    return [(center[0] + radius * np.cos(angle + k * np.pi / 3), center[1] + radius * np.sin(angle + k * np.pi / 3))
            for k in range(6)]


@product("hex_nut", "object", ("crack", "chipped_corner", "rust"))
def draw_hex_nut(pose: np.random.Generator, drng: np.random.Generator, size: int, defect: str | None) -> Painting:
    """A hexagonal steel nut seen face-on, with a threaded bore."""
    rgb = background(pose, size, 0.22)
    cy, cx = _jittered_center(pose, size, 0.04)
    radius = size * pose.uniform(0.33, 0.37)
    angle = pose.uniform(0, np.pi / 3)
    outline = _hexagon((cx, cy), radius, angle)
    body = draw_mask(size, lambda d: d.polygon(outline, fill=255))
    if defect == "chipped_corner":
        corner_x, corner_y = outline[int(drng.integers(6))]
        body &= ~irregular_blob(drng, size, (corner_y, corner_x), radius * drng.uniform(0.25, 0.33), roughness=0.4)
    dist, theta = _radial(size, (cy, cx))
    bore_r = radius * 0.42
    brushed = 0.08 * (smooth_noise(pose, size, 4, (1, 1)) - 0.5) + 0.05 * np.cos(theta * 2 + pose.uniform(0, 6))
    chamfer = np.clip((dist - radius * 0.82) / (radius * 0.1), 0, 1)
    face = 0.62 + brushed - 0.18 * chamfer
    steel = np.asarray((0.72, 0.72, 0.74), np.float32) * face[..., None]
    blend(rgb, soften(body, 0.7), steel)
    bore = dist < bore_r
    threads = 0.22 + 0.1 * np.sin(dist / bore_r * 2 * np.pi * 5) * (dist / bore_r)
    blend(rgb, soften(bore, 0.7), np.repeat(threads[..., None], 3, axis=2).astype(np.float32))
    painting = Painting(rgb, attributes={"color": "silver", "sides": "6"})
    face_region = body & ~(dist < bore_r * 1.15)
    if defect in ("crack", "rust"):
        painting.mask = surface_defect(painting.rgb, drng, erode(face_region, 2), defect)
    return painting


@product("capsule", "object", ("crack", "squeeze", "faulty_imprint"))
def draw_capsule(pose: np.random.Generator, drng: np.random.Generator, size: int, defect: str | None) -> Painting:
    """A two-tone gelatin capsule with a printed code on its body."""
    rgb = background(pose, size, 0.86, 0.015)
    pairs = {"black and orange": ((0.12, 0.12, 0.12), (0.9, 0.5, 0.15)),
             "white and blue": ((0.92, 0.92, 0.9), (0.25, 0.4, 0.75)),
             "red and yellow": ((0.75, 0.15, 0.12), (0.95, 0.82, 0.25)),
             "green and white": ((0.2, 0.55, 0.3), (0.92, 0.92, 0.9))}
    pair_name = list(pairs)[int(pose.integers(len(pairs)))]
    cap_color, body_color = (np.asarray(c, np.float32) for c in pairs[pair_name])
    cy, cx = _jittered_center(pose, size, 0.04)
    angle = pose.uniform(-0.25, 0.25)
    half_len, half_w = size * 0.32, size * 0.11
    yy, xx = pixel_grid(size)
    along = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    across = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    width = np.full_like(across, half_w)
    if defect == "squeeze":
        where = drng.uniform(-half_len * 0.5, half_len * 0.5)
        side = drng.choice([-1.0, 1.0])
        pinch = half_w * drng.uniform(0.5, 0.65) * np.exp(-((along - where) / (half_w * 0.6)) ** 2)
        width = half_w - pinch * (np.sign(across) == side)
    core = np.abs(along) <= half_len - half_w
    ends = np.hypot(np.abs(along) - (half_len - half_w), across) <= width
    shape = (core & (np.abs(across) <= width)) | (~core & ends)
    roundness = np.sqrt(np.clip(1 - (across / half_w) ** 2, 0, 1))
    shell = np.where((along < 0)[..., None], cap_color, body_color)
    highlight = 0.25 * np.exp(-((across + half_w * 0.45) / (half_w * 0.18)) ** 2)
    lit = shell * (0.55 + 0.5 * roundness)[..., None] + highlight[..., None]
    blend(rgb, soften(shape, 0.8), lit)
    seam = shape & (np.abs(along) < size * 0.006)
    blend(rgb, soften(seam, 0.5) * 0.5, (0.2, 0.2, 0.2))
    imprint = Image.new("L", (size, size), 0)
    text_x, text_y = cx + half_len * 0.45 - size * 0.05, cy - size * 0.03
    ImageDraw.Draw(imprint).text((text_x, text_y), "500", fill=255, font_size=max(8, size // 16))
    imprint = imprint.rotate(-np.rad2deg(angle), center=(cx, cy), resample=Image.BILINEAR)
    ink = np.asarray(imprint, np.float32) / 255.0
    if defect == "faulty_imprint":
        cut = half_len * 0.45 + size * drng.uniform(-0.02, 0.02)
        ink = ink * (along < cut) if drng.random() < 0.6 else ink * 0.0
    ink_color = (0.1, 0.1, 0.1) if body_color.mean() > 0.5 else (0.95, 0.95, 0.95)
    blend(rgb, ink * shape * 0.9, ink_color)
    painting = Painting(rgb, attributes={"color": pair_name})
    if defect == "crack":
        painting.mask = surface_defects.paint_crack(painting.rgb, drng, erode(shape, 3))
    return painting


#: PCB component layout in board units (0..1): name -> (kind, x, y, w, h).
PCB_LAYOUT: dict[str, tuple[str, float, float, float, float]] = {
    "microcontroller": ("ic", 0.5, 0.42, 0.3, 0.22),
    "resistor R1": ("resistor", 0.2, 0.2, 0.12, 0.05),
    "resistor R2": ("resistor", 0.2, 0.75, 0.12, 0.05),
    "capacitor C1": ("capacitor", 0.8, 0.2, 0.1, 0.1),
    "capacitor C2": ("capacitor", 0.78, 0.75, 0.1, 0.1),
    "LED": ("led", 0.5, 0.8, 0.07, 0.07),
    "crystal": ("crystal", 0.22, 0.47, 0.08, 0.14),
}


def _draw_component(draw: ImageDraw.ImageDraw, kind: str, box: tuple[float, float, float, float],
                    rotate: bool, to_px: Callable[[float, float], tuple[float, float]]) -> None:
    """Paint one component into an RGB PIL canvas (colours as 0..255 tuples)."""
    x, y, w, h = box
    if rotate:
        w, h = h, w
    (x0, y0), (x1, y1) = to_px(x - w / 2, y - h / 2), to_px(x + w / 2, y + h / 2)
    if kind == "ic":
        pins = 6
        for k in range(pins):
            px = x0 + (x1 - x0) * (k + 0.5) / pins
            draw.rectangle([px - 2, y0 - 5, px + 2, y1 + 5], fill=(190, 190, 185))
        draw.rectangle([x0, y0, x1, y1], fill=(28, 28, 30))
        draw.ellipse([x0 + 4, y0 + 4, x0 + 9, y0 + 9], fill=(60, 60, 62))
    elif kind == "resistor":
        draw.rectangle([x0, y0, x1, y1], fill=(200, 175, 130))
        for k, band in enumerate(((150, 40, 30), (30, 30, 30), (200, 120, 30))):
            bx = x0 + (x1 - x0) * (0.25 + 0.2 * k)
            if rotate:
                by = y0 + (y1 - y0) * (0.25 + 0.2 * k)
                draw.rectangle([x0, by, x1, by + 2], fill=band)
            else:
                draw.rectangle([bx, y0, bx + 2, y1], fill=band)
    elif kind == "capacitor":
        draw.ellipse([x0, y0, x1, y1], fill=(175, 178, 185))
        draw.pieslice([x0, y0, x1, y1], 200, 250, fill=(40, 40, 60))
    elif kind == "led":
        draw.ellipse([x0, y0, x1, y1], fill=(200, 30, 25))
        draw.ellipse([x0 + (x1 - x0) * 0.25, y0 + (y1 - y0) * 0.2, x0 + (x1 - x0) * 0.45,
                      y0 + (y1 - y0) * 0.4], fill=(255, 170, 160))
    elif kind == "crystal":
        draw.rounded_rectangle([x0, y0, x1, y1], radius=4, fill=(205, 205, 210))


@product("pcb", "object", ("missing_component", "misplaced_component", "scratch", "solder_splash"))
def draw_pcb(pose: np.random.Generator, drng: np.random.Generator, size: int, defect: str | None) -> Painting:
    """A small printed circuit board with traces, pads and seven components."""
    board_name, board = pick(pose, {"green": (0.12, 0.38, 0.2), "blue": (0.1, 0.22, 0.45)})
    rgb = background(pose, size, 0.2)
    margin = size * pose.uniform(0.06, 0.09)
    shift = pose.uniform(-0.02, 0.02, 2) * size
    span = size - 2 * margin

    def to_px(u: float, v: float) -> tuple[float, float]:
        return margin + shift[0] + u * span, margin + shift[1] + v * span

    canvas = Image.fromarray((rgb * 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    board_rgb = tuple(int(c * 255) for c in board)
    draw.rounded_rectangle([*to_px(0, 0), *to_px(1, 1)], radius=size // 40, fill=board_rgb)
    trace_rgb = tuple(min(255, int(c * 255 * 1.45 + 10)) for c in board)
    for start, end in (((0.2, 0.2), (0.5, 0.42)), ((0.8, 0.2), (0.5, 0.42)), ((0.2, 0.75), (0.5, 0.8)),
                       ((0.78, 0.75), (0.5, 0.8)), ((0.22, 0.47), (0.5, 0.42)), ((0.5, 0.42), (0.5, 0.95))):
        mid = (start[0], end[1])
        draw.line([to_px(*start), to_px(*mid), to_px(*end)], fill=trace_rgb, width=max(2, size // 90))
    for u, v in ((0.06, 0.06), (0.94, 0.06), (0.06, 0.94), (0.94, 0.94)):
        cx, cy = to_px(u, v)
        r = size * 0.025
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(200, 200, 190))
        draw.ellipse([cx - r / 2, cy - r / 2, cx + r / 2, cy + r / 2], fill=(20, 20, 20))
    affected = list(PCB_LAYOUT)[int(drng.integers(len(PCB_LAYOUT)))]
    for name, (kind, x, y, w, h) in PCB_LAYOUT.items():
        pad_w, pad_h = (w + 0.03, h + 0.02)
        draw.rectangle([*to_px(x - pad_w / 2, y - pad_h / 2), *to_px(x + pad_w / 2, y + pad_h / 2)],
                       fill=(185, 180, 160))
        if name == affected and defect == "missing_component":
            continue
        box, rotate = (x, y, w, h), False
        if name == affected and defect == "misplaced_component":
            dx, dy = drng.choice([-1, 1]) * drng.uniform(0.06, 0.09), drng.uniform(-0.04, 0.04)
            box, rotate = (x + dx, y + dy, w, h), kind not in ("capacitor", "led")
        _draw_component(draw, kind, box, rotate, to_px)
    rgb = np.asarray(canvas, np.float32) / 255.0
    rgb = rgb * (1.0 + 0.05 * fractal_noise(pose, size, 6, 2))[..., None]
    painting = Painting(rgb.astype(np.float32), attributes={"color": board_name,
                                                            "components": str(len(PCB_LAYOUT))})
    board_mask = draw_mask(size, lambda d: d.rectangle([*to_px(0.02, 0.02), *to_px(0.98, 0.98)], fill=255))
    if defect == "scratch":
        painting.mask = surface_defects.paint_scratch(painting.rgb, drng, board_mask, brighter=True)
    elif defect == "solder_splash":
        painting.mask = surface_defects.paint_stain(painting.rgb, drng, board_mask, color=(0.78, 0.78, 0.76),
                                                    scale=0.6)
    return painting


#: Insulation colours of the three conductors, clockwise.
CABLE_WIRES: tuple[tuple[str, Color], ...] = (("green-yellow", (0.35, 0.6, 0.2)), ("blue", (0.2, 0.35, 0.75)),
                                              ("brown", (0.45, 0.28, 0.15)))


@product("cable", "object", ("missing_wire", "cable_swap", "poke_insulation", "cut_outer_insulation"))
def draw_cable(pose: np.random.Generator, drng: np.random.Generator, size: int, defect: str | None) -> Painting:
    """A power-cable cross section: grey jacket, white filler, three coloured conductors."""
    rgb = background(pose, size, 0.12)
    cy, cx = _jittered_center(pose, size, 0.025)
    outer = size * pose.uniform(0.41, 0.44)
    dist, theta = _radial(size, (cy, cx))
    jacket = dist <= outer
    jacket_tone = 0.32 + 0.05 * fractal_noise(pose, size, 8, 2) - 0.1 * (dist / outer) ** 4
    blend(rgb, soften(jacket, 0.8), np.repeat(jacket_tone[..., None], 3, axis=2))
    filler = dist <= outer * 0.86
    filler_tone = 0.93 + 0.07 * smooth_noise(pose, size, 30)
    blend(rgb, soften(filler, 0.8), np.asarray((0.86, 0.85, 0.8), np.float32) * filler_tone[..., None])
    rotation = pose.uniform(0, 2 * np.pi)
    order = list(range(3))
    spokes = np.cos(theta * 9)
    if defect == "cable_swap":
        a, b = drng.choice(3, 2, replace=False)
        order[a], order[b] = order[b], order[a]
    missing = int(drng.integers(3)) if defect == "missing_wire" else None
    wire_r = outer * 0.36
    insulation_regions = []
    for slot, wire in enumerate(order):
        a = rotation + slot * 2 * np.pi / 3
        wy, wx = cy + np.sin(a) * outer * 0.43, cx + np.cos(a) * outer * 0.43
        wd, _ = _radial(size, (wy, wx))
        if slot == missing:
            blend(rgb, soften(wd <= wire_r, 0.8), (0.8, 0.79, 0.74))
            continue
        color = np.asarray(CABLE_WIRES[wire][1], np.float32)
        ring = (wd <= wire_r)
        blend(rgb, soften(ring, 0.8), color * (0.8 + 0.25 * (1 - wd / wire_r))[..., None])
        core = wd <= wire_r * 0.62
        strands = 0.75 + 0.25 * np.cos(wd * 1.9) * spokes
        blend(rgb, soften(core, 0.7), np.asarray((0.8, 0.5, 0.25), np.float32) * strands[..., None])
        insulation_regions.append(ring & ~core)
    painting = Painting(rgb, attributes={"color": "grey", "wires": "3"})
    if defect == "poke_insulation":
        region = insulation_regions[int(drng.integers(len(insulation_regions)))]
        painting.mask = surface_defects.paint_hole(painting.rgb, drng, erode(region, 1), scale=0.7)
    elif defect == "cut_outer_insulation":
        painting.mask = surface_defects.paint_crack(painting.rgb, drng, jacket & ~filler)
    return painting


@product("washer", "object", ("crack", "rust", "bent"))
def draw_washer(pose: np.random.Generator, drng: np.random.Generator, size: int, defect: str | None) -> Painting:
    """A flat steel washer with concentric lathe marks."""
    rgb = background(pose, size, 0.25)
    cy, cx = _jittered_center(pose, size, 0.04)
    outer = size * pose.uniform(0.34, 0.38)
    inner = outer * pose.uniform(0.42, 0.5)
    dist, theta = _radial(size, (cy, cx))
    boundary = np.full_like(dist, outer)
    if defect == "bent":
        at = drng.uniform(-np.pi, np.pi)
        gap = np.angle(np.exp(1j * (theta - at)))
        boundary = outer * (1 - drng.uniform(0.12, 0.18) * np.exp(-(gap / 0.35) ** 2))
    ring = (dist <= boundary) & (dist >= inner)
    lathe = 0.06 * np.sin(dist * 1.3 + pose.uniform(0, 6)) + 0.05 * np.cos(theta + pose.uniform(0, 6))
    edge = np.exp(-((dist - inner) / 2.0) ** 2) + np.exp(-((dist - boundary) / 2.0) ** 2)
    steel = np.asarray((0.7, 0.7, 0.72), np.float32) * (0.68 + lathe + 0.2 * edge)[..., None]
    blend(rgb, soften(ring, 0.7), steel)
    painting = Painting(rgb, attributes={"color": "silver", "holes": "1"})
    if defect in ("crack", "rust"):
        painting.mask = surface_defect(painting.rgb, drng, erode(ring, 2), defect)
    return painting
