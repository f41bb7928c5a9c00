"""Questions that ask for points, written for this toolkit.

Molmo trains each point annotation twice: once as plain pointing (the answer is the point
text) and once as point-then-count (the answer lists the points, then states the count).
The question is drawn at random from a list of templates so the model learns the task,
not one phrasing. These templates are our own wording; ``{label}`` is replaced by the
lower-cased label.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from pixmo.points.text import points_to_text

POINTING_TEMPLATES: tuple[str, ...] = (
    "Point to {label}.",
    "Point to every {label} in the image.",
    "Where is the {label}?",
    "Where are the {label}?",
    "Show me where {label} can be found.",
    "Mark each {label}.",
    "Mark the location of {label}.",
    "Put a point on every instance of {label}.",
    "Can you point at {label}?",
    "Please point to all of the {label}.",
    "Locate {label} in this picture.",
    "Find {label} and point to it.",
    "Find all {label} and mark them with points.",
    "Indicate where {label} appears.",
    "Pinpoint {label}.",
    "Pinpoint each occurrence of {label} in the photo.",
    "Identify the position of {label} by pointing.",
    "Tap on {label}.",
    "Click on {label}.",
    "Click on every {label} you can see.",
    "Which parts of the image show {label}? Point to them.",
    "Give me the coordinates of {label}.",
    "Give the locations of all {label} as points.",
    "Point out {label}.",
    "Point out each {label} in the scene.",
    "I'm looking for {label}. Where is it?",
    "Help me find {label} in this image.",
    "Could you show me {label}?",
    "Highlight {label} with points.",
    "Drop a pin on {label}.",
    "Drop a pin on each {label}.",
    "Where in the image is {label}? Answer with points.",
    "Where would I find {label} here?",
    "Place a marker on {label}.",
    "Place a marker on every {label} visible.",
    "Select {label} by pointing at it.",
    "Point at all the {label} in this photo.",
    "Show the position of each {label}.",
    "Spot {label} and point to it.",
    "Is there {label}? Point to it if so.",
    "{label}: point to it.",
    "Point: {label}",
)

POINT_COUNT_TEMPLATES: tuple[str, ...] = (
    "How many {label} are there?",
    "How many {label} are in the image?",
    "How many {label} can you see?",
    "How many {label} do you see in this picture?",
    "Count the {label}.",
    "Count the {label} in this image.",
    "Count every {label} you can find.",
    "Count all of the {label} by pointing at them.",
    "Please count the {label}.",
    "Can you count the {label}?",
    "Could you tell me how many {label} there are?",
    "What is the number of {label} in the photo?",
    "What is the total number of {label}?",
    "Tell me the number of {label}.",
    "Give me a count of the {label}.",
    "Give the count of {label} in this scene.",
    "How many {label} appear here?",
    "How many {label} are visible?",
    "How many {label} are shown?",
    "How many {label} are present in the picture?",
    "Find and count the {label}.",
    "Point to and count the {label}.",
    "Point to each {label}, then say how many there are.",
    "Mark every {label} and report the total.",
    "Locate all {label} and count them.",
    "Count {label} in the image, pointing at each one.",
    "What's the count of {label}?",
    "How many instances of {label} are there?",
    "How many {label} does this image contain?",
    "Number of {label}?",
    "Count: {label}",
    "{label}: how many?",
    "I need to know how many {label} there are.",
    "Quickly count the {label} for me.",
    "How many {label} are in this photo? Show your work with points.",
    "Total {label} in the image?",
    "Enumerate the {label} and give the total.",
    "How many {label} would you say there are?",
    "Can you tell how many {label} are pictured?",
    "Count how many {label} there are.",
    "How many {label} are there in total?",
    "Do a count of the {label}.",
)


def point_prompt(label: str, *, count: bool, rng: random.Random) -> str:
    """A random pointing (or, with ``count``, point-then-count) question about ``label``."""
    templates = POINT_COUNT_TEMPLATES if count else POINTING_TEMPLATES
    return rng.choice(templates).format(label=label.lower())


def point_example(
    point_set: dict[str, Any], *, count: bool, rng: random.Random
) -> tuple[str, str]:
    """(question, answer) for one ``point_set`` of a sample (schema ``sample``)."""
    points: Sequence[Sequence[float]] = point_set["points"]
    answer = points_to_text([(p[0], p[1]) for p in points], point_set["label"], count=count)
    return point_prompt(point_set["label"], count=count, rng=rng), answer
