"""Synthetic scenes: a pure function of the seed, every centre visible, and a
description that names every label with its count."""

from __future__ import annotations

import numpy as np
import pytest

from pixmo.synth.scenes import COLOURS, NUMBERS, SceneConfig, describe, make_scene, render


def _scene(seed: int, **config):
    rng = np.random.default_rng(seed)
    scene = make_scene(rng, SceneConfig(**config))
    return scene, np.asarray(render(scene, rng)), describe(scene, rng)


def test_same_seed_same_scene_and_pixels():
    a, pixels_a, text_a = _scene(3)
    b, pixels_b, text_b = _scene(3)
    assert a == b and text_a == text_b
    assert np.array_equal(pixels_a, pixels_b)
    assert not np.array_equal(pixels_a, _scene(4)[1])


@pytest.mark.parametrize("seed", range(12))
def test_every_centre_shows_its_object(seed):
    scene, pixels, _ = _scene(seed, counting_share=0.5)
    assert pixels.shape == (scene.height, scene.width, 3)
    assert 1 <= len(scene.objects)
    for obj in scene.objects:
        assert obj.radius <= obj.x <= scene.width - obj.radius
        assert obj.radius <= obj.y <= scene.height - obj.radius
        got = pixels[int(obj.y), int(obj.x)].astype(int)
        assert np.abs(got - COLOURS[obj.colour]).max() <= 2, (obj, got)


@pytest.mark.parametrize("seed", range(12))
def test_description_names_every_label_with_its_count(seed):
    scene, _, text = _scene(seed, counting_share=0.5)
    truth = scene.truth()
    assert sum(lab["count"] for lab in truth["labels"]) == len(scene.objects)
    for lab in truth["labels"]:
        colour, shape = lab["label"].split(" ", 1)
        if lab["count"] == 1:
            assert f"{colour} {shape}" in text
        else:
            assert f"{NUMBERS[lab['count']]} {colour} {shape}s" in text
    if scene.counting_label:
        (counted,) = [lab for lab in truth["labels"] if lab["collection_method"] == "counting"]
        assert counted["label"] == scene.counting_label and counted["count"] >= 2
        assert "I counted" in text


def test_counting_scenes_and_occlusion_happen():
    scenes = [_scene(seed, counting_share=0.5)[0] for seed in range(30)]
    assert any(s.counting_label for s in scenes)
    assert any(s.occlusions for s in scenes)
    assert {s.background for s in scenes} == {"gradient", "noise", "stripes"}


def test_config_is_checked():
    with pytest.raises(ValueError, match="min_objects"):
        SceneConfig(min_objects=-1)
    with pytest.raises(ValueError, match="could be empty"):
        SceneConfig(min_objects=0, counting_share=0.5)
    with pytest.raises(ValueError, match="min_count"):
        SceneConfig(min_count=0)
    with pytest.raises(ValueError, match="backgrounds"):
        SceneConfig(backgrounds=("checkerboard",))
    with pytest.raises(ValueError, match="max_count"):
        SceneConfig(max_count=50)
    with pytest.raises(ValueError, match=r"counting_share must be in \[0, 1\], got 1.5"):
        SceneConfig(counting_share=1.5)
    with pytest.raises(ValueError, match=r"SceneConfig.count_radius must be in \(0, 0.5\)"):
        SceneConfig(count_radius=0.5)


def test_scene_config_restricts_colours_shapes_backgrounds_and_count_size():
    cfg = SceneConfig(min_objects=1, max_objects=1, counting_share=1.0, min_count=2,
                      max_count=6, count_radius=0.07, colours=("red", "blue"),
                      shapes=("circle",), backgrounds=("gradient",))
    rng = np.random.default_rng(3)
    for _ in range(20):
        scene = make_scene(rng, cfg)
        assert scene.background == "gradient"
        assert {o.colour for o in scene.objects} <= {"red", "blue"}
        assert {o.shape for o in scene.objects} == {"circle"}
        counted = scene.groups()[scene.counting_label]
        assert 2 <= len(counted) <= 6
        assert all(abs(o.radius - 0.07 * min(scene.width, scene.height)) < 1e-9
                   for o in counted)
    with pytest.raises(ValueError, match="SceneConfig.shapes"):
        SceneConfig(shapes=("blob",))


def test_counting_only_scenes_on_a_plain_background():
    """The demo's scenes: one labelled group of 1-7 copies and nothing else, on one colour."""
    cfg = SceneConfig(min_objects=0, max_objects=0, counting_share=1.0, min_count=1,
                      max_count=7, backgrounds=("plain",))
    rng = np.random.default_rng(5)
    counts = set()
    for _ in range(40):
        scene = make_scene(rng, cfg)
        pixels = np.asarray(render(scene, rng))
        assert set(scene.groups()) == {scene.counting_label}
        counts.add(len(scene.objects))
        assert scene.background == "plain"
        away = [(x, y) for x in range(0, scene.width, 7) for y in range(0, scene.height, 7)
                if all((x - o.x) ** 2 + (y - o.y) ** 2 > (o.radius + 3) ** 2
                       for o in scene.objects)]
        assert len({tuple(pixels[y, x]) for x, y in away}) == 1  # one colour off the shapes
        text = describe(scene, rng)
        assert "plain pale" in text
        n = len(scene.objects)
        assert f"I counted {NUMBERS[n]} small" in text
    assert counts == set(range(1, 8))
