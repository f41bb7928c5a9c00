"""Synthetic scenes with known objects, and what a person would say about them.

A scene is a few coloured shapes (circle, square, triangle, star, diamond,
hexagon) of two sizes on a background (gradient, noise, stripes or plain), placed so
that shapes may overlap but no shape hides another's centre: the centre is
where an annotator clicks, and it is the ground truth for pointing. Some
scenes hold many small copies of one shape, for counting.

Everything is drawn from a ``numpy.random.Generator``, so a scene is a pure
function of its seed. Positions are in pixels of the displayed (upright) image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from pixmo.config import between, check_fields, subset_of
from pixmo.errors import ConfigError

SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 88, 200),
    "yellow": (245, 205, 30),
    "orange": (255, 127, 14),
    "purple": (148, 73, 189),
    "black": (25, 25, 25),
    "white": (250, 250, 250),
}
BACKGROUNDS = ("gradient", "noise", "stripes", "plain")
SIZES = ("small", "large")
NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
           "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
           "eighteen", "nineteen", "twenty")


@dataclass(frozen=True)
class SceneConfig:
    """What scenes look like. Sizes are (width, height) of the displayed image."""

    sizes: tuple[tuple[int, int], ...] = ((320, 240), (400, 300), (288, 288), (480, 320),
                                          (240, 320))
    min_objects: int = 2
    max_objects: int = 5
    counting_share: float = 0.25  # scenes that also hold many copies of one shape
    min_count: int = 8
    max_count: int = 18
    count_radius: float = 0.045  # the counted copies' radius, a share of the shorter side
    colours: tuple[str, ...] = tuple(COLOURS)
    shapes: tuple[str, ...] = SHAPES
    backgrounds: tuple[str, ...] = ("gradient", "noise", "stripes")  # "plain" on request

    def __post_init__(self) -> None:
        if not 0 <= self.min_objects <= self.max_objects:
            raise ConfigError(f"needs 0 <= min_objects <= max_objects, got {self.min_objects}, "
                              f"{self.max_objects}", field="SceneConfig")
        if self.min_objects == 0 and self.counting_share < 1:
            raise ConfigError("0 needs counting_share 1, or a scene could be empty",
                              field="SceneConfig.min_objects")
        if not 1 <= self.min_count <= self.max_count <= len(NUMBERS) - 1:
            raise ConfigError(f"needs 1 <= min_count <= max_count <= {len(NUMBERS) - 1}, got "
                              f"{self.min_count}, {self.max_count}", field="SceneConfig")
        check_fields(self, colours=subset_of(COLOURS), shapes=subset_of(SHAPES),
                     backgrounds=subset_of(BACKGROUNDS), counting_share=between(0, 1),
                     count_radius=between(0, 0.5, open_low=True, open_high=True))


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    x: float  # centre, pixels of the displayed image
    y: float
    radius: float
    angle: float  # degrees

    @property
    def label(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    background: str
    background_colours: tuple[str, str]
    objects: tuple[SceneObject, ...]  # in drawing order: later ones lie on top
    counting_label: str | None = None
    occlusions: tuple[tuple[int, int], ...] = ()  # (upper, lower) indices of overlaps

    def groups(self) -> dict[str, list[SceneObject]]:
        """Objects by label, labels in order of first appearance."""
        out: dict[str, list[SceneObject]] = {}
        for obj in self.objects:
            out.setdefault(obj.label, []).append(obj)
        return out

    def truth(self) -> dict[str, Any]:
        """The scene's objects and labels in percent of width/height (x then y)."""
        def pct(obj: SceneObject) -> list[float]:
            return [round(obj.x / self.width * 100, 3), round(obj.y / self.height * 100, 3)]

        return {
            "background": self.background,
            "objects": [{"label": o.label, "shape": o.shape, "colour": o.colour,
                         "size": o.size, "centre": pct(o),
                         "radius": round(o.radius / math.hypot(self.width, self.height) * 100,
                                         3)} for o in self.objects],
            "labels": [{"label": label, "count": len(objs), "points": [pct(o) for o in objs],
                        "collection_method": ("counting" if label == self.counting_label
                                              else "pointing")}
                       for label, objs in self.groups().items()],
        }


def make_scene(rng: np.random.Generator, cfg: SceneConfig) -> Scene:
    """A random scene: a background and objects whose centres stay visible."""
    width, height = cfg.sizes[int(rng.integers(len(cfg.sizes)))]
    background = cfg.backgrounds[int(rng.integers(len(cfg.backgrounds)))]
    pale = ("yellow", "blue", "green", "orange", "purple", "red")
    first, second = rng.choice(pale, size=2, replace=False)
    bg = (str(first), str(second))
    short = min(width, height)
    objects: list[SceneObject] = []
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    counting = None
    if rng.random() < cfg.counting_share:
        counting = (str(rng.choice(cfg.colours)), str(rng.choice(cfg.shapes)))
    for _ in range(n):
        size = SIZES[int(rng.integers(2))]
        radius = short * (rng.uniform(0.06, 0.09) if size == "small" else rng.uniform(0.12, 0.17))
        colour, shape = str(rng.choice(cfg.colours)), str(rng.choice(cfg.shapes))
        if counting is not None and (colour, shape) == counting:
            continue  # the counting label is only the many small copies
        obj = _place(rng, objects, shape, colour, size, radius, width, height, overlap=True)
        if obj is not None:
            objects.append(obj)
    if counting is not None:
        k = int(rng.integers(cfg.min_count, cfg.max_count + 1))
        for _ in range(k):
            obj = _place(rng, objects, counting[1], counting[0], "small", short * cfg.count_radius,
                         width, height, overlap=False)
            if obj is not None:
                objects.append(obj)
    occlusions = tuple((i, j) for i, a in enumerate(objects) for j, b in enumerate(objects[:i])
                       if math.hypot(a.x - b.x, a.y - b.y) < a.radius + b.radius)
    return Scene(width, height, background, bg, tuple(objects),
                 f"{counting[0]} {counting[1]}" if counting else None, occlusions)


def _place(rng: np.random.Generator, placed: list[SceneObject], shape: str, colour: str,
           size: str, radius: float, width: int, height: int, *,
           overlap: bool) -> SceneObject | None:
    """Somewhere inside the image where no centre is covered; None after 200 tries.
    With ``overlap`` shapes may cover parts of each other (occlusion)."""
    for _ in range(200):
        x = rng.uniform(radius + 2, width - radius - 2)
        y = rng.uniform(radius + 2, height - radius - 2)
        ok = True
        for other in placed:
            d = math.hypot(x - other.x, y - other.y)
            needed = (max(radius, other.radius) * 1.3 if overlap
                      else radius + other.radius + 2)
            if d < needed:
                ok = False
                break
        if ok:
            return SceneObject(shape, colour, size, float(x), float(y), float(radius),
                               float(rng.uniform(0, 360)))
    return None


# ------------------------------------------------------------------ drawing


def _polygon(obj: SceneObject) -> list[tuple[float, float]]:
    corners = {"square": 4, "triangle": 3, "hexagon": 6}
    turn = math.radians(obj.angle)
    if obj.shape == "star":
        pts = []
        for i in range(10):
            r = obj.radius if i % 2 == 0 else obj.radius * 0.45
            a = turn + i * math.pi / 5
            pts.append((obj.x + r * math.sin(a), obj.y - r * math.cos(a)))
        return pts
    if obj.shape == "diamond":  # a narrow square standing on a corner
        r = obj.radius
        return [(obj.x, obj.y - r), (obj.x + 0.7 * r, obj.y), (obj.x, obj.y + r),
                (obj.x - 0.7 * r, obj.y)]
    k = corners[obj.shape]
    if obj.shape == "square":
        turn = math.radians(obj.angle % 30)  # tilted a little, never a diamond
    return [(obj.x + obj.radius * math.sin(turn + i * 2 * math.pi / k),
             obj.y - obj.radius * math.cos(turn + i * 2 * math.pi / k)) for i in range(k)]


def _background(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    h, w = scene.height, scene.width
    a = np.array(COLOURS[scene.background_colours[0]], np.float64) * 0.35 + 165
    b = np.array(COLOURS[scene.background_colours[1]], np.float64) * 0.35 + 165
    if scene.background == "gradient":
        t = np.linspace(0, 1, w)[None, :, None] * np.ones((h, 1, 1))
        if rng.random() < 0.5:
            t = np.linspace(0, 1, h)[:, None, None] * np.ones((1, w, 1))
        pixels = a * (1 - t) + b * t
    elif scene.background == "plain":
        pixels = a * np.ones((h, w, 1))
    elif scene.background == "stripes":
        period = int(rng.integers(12, 40))
        yy, xx = np.mgrid[0:h, 0:w]
        band = (((xx + yy * rng.choice([-1, 0, 1])) // period) % 2)[..., None]
        pixels = np.where(band == 1, a, b) * np.ones((h, w, 1))
    else:
        coarse = rng.normal(0, 1, (h // 16 + 2, w // 16 + 2))
        from PIL import Image

        smooth = np.asarray(Image.fromarray(((coarse - coarse.min()) / np.ptp(coarse) * 255)
                                            .astype(np.uint8)).resize((w, h), Image.BICUBIC),
                            np.float64)[..., None] / 255
        grain = rng.normal(0, 6, (h, w, 1))
        pixels = a * (1 - smooth) + b * smooth + grain
    return np.clip(pixels, 0, 255).astype(np.uint8)


def render(scene: Scene, rng: np.random.Generator) -> Any:
    """The scene as an upright RGB ``PIL.Image``."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(_background(scene, rng), "RGB")
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        fill = COLOURS[obj.colour]
        outline = (0, 0, 0) if obj.colour != "black" else (230, 230, 230)
        if obj.shape == "circle":
            r = obj.radius
            draw.ellipse((obj.x - r, obj.y - r, obj.x + r, obj.y + r), fill=fill,
                         outline=outline, width=2)
        else:
            draw.polygon(_polygon(obj), fill=fill, outline=outline, width=2)
    return image


# ------------------------------------------------------------------ describing


def _where(x: float, y: float, width: int, height: int) -> str:
    col = min(2, int(x / width * 3))
    row = min(2, int(y / height * 3))
    if (row, col) == (1, 1):
        return "in the middle"
    vertical = ("at the top", "", "at the bottom")[row]
    horizontal = ("left", "", "right")[col]
    if not vertical:
        return f"on the {horizontal}"
    if not horizontal:
        return vertical
    return f"{vertical} {horizontal}"


def _plural(shape: str, n: int) -> str:
    return shape if n == 1 else f"{shape}s"


def describe(scene: Scene, rng: np.random.Generator) -> str:
    """A spoken-style description naming every label with its count and place.
    Each call words it differently (opening, order, details), as different
    speakers would."""
    openings = ("In this picture I can see", "This image shows", "Here I see",
                "The picture has", "Looking at this image, I can see")
    parts = []
    groups = list(scene.groups().items())
    order = rng.permutation(len(groups))
    for i in order:
        label, objs = groups[int(i)]
        colour, shape = label.split(" ", 1)
        n = len(objs)
        if n == 1:
            o = objs[0]
            parts.append(f"a {o.size} {colour} {shape} "
                         f"{_where(o.x, o.y, scene.width, scene.height)}")
        else:
            places = sorted({_where(o.x, o.y, scene.width, scene.height) for o in objs})
            where = "spread all over the picture" if len(places) > 3 else \
                " and ".join(places[:2]) if len(places) > 1 else places[0]
            parts.append(f"{NUMBERS[n]} {colour} {_plural(shape, n)} {where}")
    sentences = [f"{openings[int(rng.integers(len(openings)))]} {_join(parts)}."]
    if scene.counting_label:
        n = len(scene.groups()[scene.counting_label])
        colour, shape = scene.counting_label.split(" ", 1)
        sentences.append(f"I counted {NUMBERS[n]} small {colour} {_plural(shape, n)} in total.")
    for upper, lower in scene.occlusions[:1]:
        a, b = scene.objects[upper], scene.objects[lower]
        sentences.append(f"The {a.colour} {a.shape} covers part of the {b.colour} {b.shape}.")
    bg = scene.background_colours
    sentences.append({
        "gradient": f"The background is a smooth gradient from pale {bg[0]} to pale {bg[1]}.",
        "stripes": f"The background has pale {bg[0]} and {bg[1]} stripes.",
        "noise": f"The background is a blotchy, noisy mix of pale {bg[0]} and {bg[1]}.",
        "plain": f"The background is plain pale {bg[0]}.",
    }[scene.background])
    return " ".join(sentences)


def _join(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + ", and " + parts[-1]
