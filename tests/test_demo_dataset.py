"""The procedural shapes dataset: determinism, captions that match the pixels, tool pairs that are consistent."""

import numpy as np

from mflux_core.demo import dataset
from mflux_core.demo.shapes import COLOURS, REGION_NAMES, caption, region_of, render, shape_mask


def nearest_colour(rgb) -> str:
    return min(COLOURS, key=lambda name: np.sum((np.array(COLOURS[name]) - np.asarray(rgb, float)) ** 2))


def test_examples_are_a_pure_function_of_seed_and_index():
    a, b = dataset.text_to_image_example(3, 17), dataset.text_to_image_example(3, 17)
    assert a.caption == b.caption and np.array_equal(a.image, b.image)
    assert dataset.text_to_image_example(3, 18).caption != a.caption or not np.array_equal(
        dataset.text_to_image_example(3, 18).image, a.image)


def test_the_caption_names_what_is_drawn():
    for index in range(40):
        example = dataset.text_to_image_example(0, index)
        shape = example.scene.shapes[0]
        mask = shape_mask(shape, 64)
        assert mask.sum() > 30
        inside = example.image[mask]
        assert nearest_colour(np.median(inside, axis=0)) == shape.colour
        assert nearest_colour(example.image[0, 0]) == example.scene.background != shape.colour
        ys, xs = np.nonzero(mask)
        assert region_of((xs.mean() + 0.5) / 64, (ys.mean() + 0.5) / 64) == shape.region
        assert shape.colour in example.caption and shape.kind in example.caption
    full = caption(example.scene)
    assert full.startswith(("a ", "an ")) and full.endswith(" background")


def test_held_out_combinations_never_reach_training():
    training = {dataset.text_to_image_example(0, i).scene for i in range(300)}
    held_out = {dataset.text_to_image_example(0, i, held_out=True).scene for i in range(100)}
    assert all(not dataset.is_held_out(s.shapes[0], s.background) for s in training)
    assert all(dataset.is_held_out(s.shapes[0], s.background) for s in held_out)
    kinds = {(s.shapes[0].colour, s.shapes[0].kind, s.shapes[0].region, s.background) for s in training}
    assert len(kinds) > 250  # the training split covers many combinations


def test_fill_pairs_change_only_inside_the_mask():
    for index in range(20):
        example = dataset.fill_example(0, index)
        assert np.array_equal(example.source[~example.mask], example.target[~example.mask])
        assert not np.array_equal(example.source[example.mask], example.target[example.mask])
        shape = example.scene.shapes[0]
        assert (shape_mask(shape, 64) <= example.mask).all()  # the mask covers the new shape
        assert example.caption == caption(example.scene)


def test_depth_maps_raise_the_shape_above_the_floor():
    for index in range(10):
        example = dataset.depth_example(0, index)
        mask = shape_mask(example.scene.shapes[0], 64)
        depth = example.control[..., 0].astype(int)
        assert depth[mask].min() > depth[~mask].max() - 20 and depth[mask].mean() > 150 > depth[~mask].mean()
        assert "background" in example.caption and not any(f" {r} " in example.caption for r in ("left", "right"))


def test_canny_edges_outline_the_shape():
    example = dataset.canny_example(0, 1)
    edges = example.control[..., 0] > 127
    mask = shape_mask(example.scene.shapes[0], 64)
    ys, xs = np.nonzero(edges)
    assert len(ys) > 10
    outline = mask ^ np.pad(mask, 1)[2:, 1:-1] | mask ^ np.pad(mask, 1)[1:-1, 2:]
    near = np.zeros_like(mask)
    for dy in (-2, -1, 0, 1, 2):
        for dx in (-2, -1, 0, 1, 2):
            near |= np.roll(np.roll(outline, dy, 0), dx, 1)
    assert near[edges].mean() > 0.9


def test_kontext_pairs_do_what_the_instruction_says():
    kinds = set()
    for index in range(30):
        example = dataset.kontext_example(0, index)
        kinds.add(example.kind)
        before, after = example.before_scene, example.after_scene
        shape_before, shape_after = before.shapes[0], after.shapes[0]
        words = example.instruction.split()
        if example.kind == "colour":
            assert words[-1] == shape_after.colour != shape_before.colour
            assert shape_after.region == shape_before.region and after.background == before.background
        elif example.kind == "move":
            assert example.instruction.endswith(shape_after.region) and shape_after.region != shape_before.region
            assert shape_after.colour == shape_before.colour
        else:
            assert words[-1] == after.background != before.background
        assert np.array_equal(example.after, render(after, 64))
    assert kinds == {"colour", "move", "background"}
    assert set(REGION_NAMES) >= {dataset.kontext_example(0, i).after_scene.shapes[0].region for i in range(5)}


def test_larger_images_render_the_same_scene():
    scene = dataset.text_to_image_example(0, 4).scene
    small, large = render(scene, 64), render(scene, 128)
    assert large.shape == (128, 128, 3)
    shrunk = large.reshape(64, 2, 64, 2, 3).mean(axis=(1, 3))
    assert np.mean(np.abs(shrunk - small)) < 3


def test_any_aspect_renders_the_scene_in_its_proportions():
    """The sizes stages' pictures: places are fractions of each side, shapes keep their proportions (sized by
    the shorter side), so a circle stays round and in its region on a wide or a tall picture."""
    for width, height in ((128, 48), (48, 96), (80, 64)):
        for index in range(12):
            example = dataset.text_to_image_example(0, index, width, height=height)
            shape = example.scene.shapes[0]
            assert example.image.shape == (height, width, 3)
            mask = shape_mask(shape, width, height)
            assert mask.shape == (height, width) and mask.sum() > 0.5 * (shape.size * min(width, height)) ** 2
            assert nearest_colour(np.median(example.image[mask], axis=0)) == shape.colour
            ys, xs = np.nonzero(mask)
            assert region_of((xs.mean() + 0.5) / width, (ys.mean() + 0.5) / height) == shape.region
            if shape.kind == "circle":
                assert abs(np.ptp(xs) - np.ptp(ys)) <= 1
    fill = dataset.fill_example(0, 3, 112, height=64)
    assert fill.mask.shape == (64, 112) and (shape_mask(fill.scene.shapes[0], 112, 64) <= fill.mask).all()
    upscale = dataset.upscale_example(0, 5, 128, height=64)
    assert upscale.control.shape == upscale.image.shape == (64, 128, 3)
    assert dataset.low_resolution(upscale.image, 16).size == (32, 16)
