"""Line charts on a :class:`png.Canvas`: latency CDFs and offered against answered rate."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .png import RGB, Canvas

#: Colour-blind-safe palette (Okabe and Ito), then grey.
PALETTE: tuple[RGB, ...] = ((0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167),
                            (230, 159, 0), (86, 180, 233), (120, 120, 120))
GRID: RGB = (225, 225, 225)
AXIS: RGB = (0, 0, 0)
WIDTH, HEIGHT = 800, 480
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 40, 50
#: Points kept per series; a CDF of 100,000 samples needs no more to look the same.
MAX_POINTS = 800


@dataclass(frozen=True)
class Series:
    label: str
    xs: Sequence[float]
    ys: Sequence[float]
    #: Draw dashed (the second series of a pair, e.g. misses next to hits).
    dashed: bool = False
    #: Mark each point (few points, as in a rate ramp).
    markers: bool = False
    #: Index into :data:`PALETTE`.
    color: int = 0


def cdf(label: str, values_s: Sequence[float], *, color: int = 0, dashed: bool = False) -> Series:
    """The empirical CDF of latencies given in seconds, x in milliseconds."""
    v = sorted(x * 1000 for x in values_s)
    n = len(v)
    keep = range(n) if n <= MAX_POINTS else sorted({round(i * (n - 1) / (MAX_POINTS - 1)) for i in range(MAX_POINTS)})
    return Series(label, [v[i] for i in keep], [(i + 1) / n for i in keep], dashed=dashed, color=color)


def _nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """About *count* round values (1, 2 or 5 times a power of ten apart) covering [lo, hi]."""
    span = hi - lo if hi > lo else (abs(hi) or 1.0)
    raw = span / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 2) if first + i * step <= hi + step * 1e-9]


def _label(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v / 1000:g}K" if abs(v) < 1e6 else f"{v / 1e6:g}M"
    return f"{v:.3g}"


def chart(series: Sequence[Series], *, title: str, xlabel: str, ylabel: str, xlog: bool = False,
          diagonal: bool = False) -> Canvas:
    """A line chart of *series* with grid, tick labels and a legend.

    :param xlog: Logarithmic x axis (decades), for latencies spanning orders of magnitude.
    :param diagonal: Draw y = x dotted (answered against offered rate).
    """
    c = Canvas(WIDTH, HEIGHT)
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    pts = [(x, y) for s in series for x, y in zip(s.xs, s.ys) if math.isfinite(x) and math.isfinite(y)]
    if xlog:
        pts = [(x, y) for x, y in pts if x > 0]
    if not pts:
        c.text(LEFT, TOP + ph // 2, "NO DATA")
        c.text(LEFT, 12, title)
        return c
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    if xlog:
        x0, x1 = math.floor(math.log10(min(xs))), math.ceil(math.log10(max(xs)))
        x1 = max(x1, x0 + 1)
        xticks = [10.0 ** k for k in range(x0, x1 + 1)]
        fx = lambda v: (math.log10(v) - x0) / (x1 - x0)  # noqa: E731
    else:
        lo = min(0.0, min(xs))
        xticks = _nice_ticks(lo, max(xs))
        x0f, x1f = xticks[0], xticks[-1] if xticks[-1] > xticks[0] else xticks[0] + 1
        fx = lambda v: (v - x0f) / (x1f - x0f)  # noqa: E731
    yticks = _nice_ticks(min(0.0, min(ys)), max(ys) if max(ys) > 0 else 1.0)
    y0f, y1f = yticks[0], yticks[-1] if yticks[-1] > yticks[0] else yticks[0] + 1

    def px(x: float, y: float) -> tuple[int, int]:
        return (LEFT + round(fx(x) * pw), TOP + ph - round((y - y0f) / (y1f - y0f) * ph))

    for t in xticks:
        x, _ = px(t, y0f)
        c.line(x, TOP, x, TOP + ph, GRID)
        lab = _label(t)
        c.text(x - Canvas.text_width(lab) // 2, TOP + ph + 8, lab)
    for t in yticks:
        _, y = px(xticks[0], t)
        c.line(LEFT, y, LEFT + pw, y, GRID)
        lab = _label(t)
        c.text(LEFT - 8 - Canvas.text_width(lab), y - 5, lab)
    c.line(LEFT, TOP, LEFT, TOP + ph, AXIS)
    c.line(LEFT, TOP + ph, LEFT + pw, TOP + ph, AXIS)
    if diagonal:
        lo, top = max(xticks[0], y0f), min(xticks[-1], yticks[-1])
        c.line(*px(lo, lo), *px(top, top), (150, 150, 150), dash=4)
    for k, s in enumerate(series):
        color = PALETTE[s.color % len(PALETTE)]
        # Series drawn earlier are wider, so one that a later one covers exactly still shows.
        width = 2 + 2 * (len(series) - 1 - k) if s.markers else 2
        prev, phase = None, 0
        for vx, vy in zip(s.xs, s.ys):
            if not (math.isfinite(vx) and math.isfinite(vy)) or (xlog and vx <= 0):
                continue
            p = px(vx, vy)
            if prev is not None:
                phase = c.line(*prev, *p, color, width=width, dash=5 if s.dashed else 0, phase=phase)
            if s.markers:
                c.rect(p[0] - width - 1, p[1] - width - 1, p[0] + width + 1, p[1] + width + 1, color)
            prev = p
    c.text(LEFT, 6, title)
    c.text(LEFT + pw - Canvas.text_width(xlabel), HEIGHT - 18, xlabel)
    c.text(8, 22, ylabel)
    # Legend, top left inside the plot.
    ly = TOP + 8
    for s in series:
        color = PALETTE[s.color % len(PALETTE)]
        c.line(LEFT + 10, ly + 4, LEFT + 34, ly + 4, color, width=3, dash=5 if s.dashed else 0)
        c.text(LEFT + 42, ly, s.label)
        ly += 16
    return c
