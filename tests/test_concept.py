"""Concept attention: the image is untouched, planted concepts are found, layers and steps are as asked."""

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_unflatten
from PIL import Image

from mflux_core.concept.attention import ConceptRecorder, ConceptTokens, velocity_with_concepts
from mflux_core.concept.heatmap import concept_maps
from mflux_core.concept.run import (
    ConceptSettings, concepts_from_image, generate_with_concepts, heatmap_layers, heatmap_steps,
)
from mflux_core.errors import InvalidRequest
from mflux_core.events import Loading
from mflux_core.manager import ModelManager
from mflux_core.models.transformer import FluxTransformer, FluxTransformerConfig, load_transformer
from mflux_core.request import GenerationRequest
from mflux_core.sampling.latents import image_position_ids, text_position_ids
from tests.parity import max_uint8_diff, run_cli

PROMPT = "a red circle above a green square"


def random_inputs(transformer, grid=(8, 8), text_tokens=5, seed=0):
    rng = np.random.default_rng(seed)
    config = transformer.config
    normal = lambda *shape: mx.array(rng.standard_normal(shape).astype(np.float32))  # noqa: E731
    tokens = (grid[0] // 2) * (grid[1] // 2)
    return dict(hidden_states=normal(1, tokens, config.in_channels),
                encoder_hidden_states=normal(1, text_tokens, config.joint_attention_dim),
                pooled_projections=normal(1, config.pooled_projection_dim), timestep=mx.array([0.7]),
                img_ids=image_position_ids(*grid), txt_ids=text_position_ids(text_tokens),
                guidance=mx.array([3.5]) if config.guidance_embeds else None)


def test_the_concept_stream_leaves_the_velocity_bit_identical(tiny_dev):
    transformer = load_transformer(tiny_dev / "transformer")
    inputs = random_inputs(transformer)
    concepts = ConceptTokens(mx.array(np.random.default_rng(1).standard_normal((1, 3, 32)).astype(np.float32)),
                             ((0, 2), (2, 3)))
    plain = np.array(transformer(**inputs))
    for layers in [(0,), (1,), (0, 1)]:
        velocity, scores = velocity_with_concepts(transformer, concepts, layers, **inputs)
        assert np.array_equal(np.array(velocity), plain), layers
        assert sorted(scores) == list(layers)
        assert all(s.shape == (2, 16) for s in scores.values())
    # A concept's map depends on the concepts beside it (they attend to each other), never the velocity on them.
    alone, _ = velocity_with_concepts(transformer, ConceptTokens(concepts.states[:, :2], ((0, 2),)), (1,), **inputs)
    assert np.array_equal(np.array(alone), plain)


# --- a constructed case: a transformer built by hand so that attention follows token features -------

FEATURE_A, FEATURE_B, BACKGROUND, TEXT = (np.eye(16)[i] - np.eye(16)[i + 1] for i in (0, 2, 4, 6))


def planted_transformer(gain: float = 2.0) -> FluxTransformer:
    """One head of 16 channels whose first 8 are not rotated (position axis 0 is 0 for every token):
    identity embeddings and projections, zero modulation, so a token's attention output is the mean
    of the tokens whose feature matches its own."""
    mx.random.seed(0)
    transformer = FluxTransformer(FluxTransformerConfig(
        in_channels=16, out_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=1, joint_attention_dim=16, pooled_projection_dim=4, guidance_embeds=False,
        axes_dims_rope=(8, 4, 4)))
    identity = mx.eye(16)
    planted = {}
    for name, value in tree_flatten(transformer.parameters()):
        if name.startswith("transformer_blocks.0."):
            value = mx.zeros_like(value)
            if name.endswith(("to_q.weight", "to_k.weight", "to_v.weight", "q_proj.weight", "k_proj.weight",
                              "v_proj.weight")):
                value = identity
            elif ".norm_" in name:
                value = mx.full(value.shape, gain)
        elif name in ("x_embedder.weight", "context_embedder.weight"):
            value = identity
        elif name in ("x_embedder.bias", "context_embedder.bias"):
            value = mx.zeros_like(value)
        planted[name] = value
    transformer.update(tree_unflatten(list(planted.items())))
    return transformer


def planted_latents(rng) -> tuple[mx.array, np.ndarray, np.ndarray]:
    """An 8x8 token image: feature A in the top-left 4x4 block, B in the bottom-right 3x3, background elsewhere."""
    region_a = np.zeros((8, 8), bool)
    region_a[:4, :4] = True
    region_b = np.zeros((8, 8), bool)
    region_b[5:, 5:] = True
    features = np.where(region_a[..., None], FEATURE_A, np.where(region_b[..., None], FEATURE_B, BACKGROUND))
    features = features + 0.1 * rng.standard_normal(features.shape)
    return mx.array(features.reshape(1, 64, 16).astype(np.float32)), region_a, region_b


def planted_maps(concept_features: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    transformer = planted_transformer()
    latents, region_a, region_b = planted_latents(rng)
    concepts = ConceptTokens(mx.array(np.stack(concept_features)[None].astype(np.float32)),
                             tuple((i, i + 1) for i in range(len(concept_features))))
    _, scores = velocity_with_concepts(
        transformer, concepts, (0,), latents, mx.array(np.stack([TEXT, TEXT])[None].astype(np.float32)),
        mx.zeros((1, 4)), mx.array([0.5]), image_position_ids(16, 16), text_position_ids(2))
    return concept_maps([scores[0]], (16, 16)), region_a, region_b


def test_a_single_planted_concept_puts_its_heatmap_mass_on_its_region():
    (heatmap,), region_a, _ = planted_maps([FEATURE_A])
    assert heatmap.shape == (8, 8)
    assert heatmap.min() == 0 and heatmap.max() == 1
    inside = heatmap[region_a].sum() / heatmap.sum()
    assert inside > 0.9, f"{inside:.3f} of the mass inside a region of {region_a.mean():.0%} of the image"


def test_two_planted_concepts_each_claim_their_own_region():
    (map_a, map_b), region_a, region_b = planted_maps([FEATURE_A, FEATURE_B])
    assert np.allclose(map_a + map_b, 1, atol=1e-6)  # softmax over the concepts in every token
    assert map_a[region_a].min() > 0.95 and map_a[region_b].max() < 0.05
    assert map_b[region_b].min() > 0.95 and map_b[region_a].max() < 0.05


def test_concept_maps_average_the_chosen_entries():
    scores = [mx.array([[1.0, 2.0, 3.0, 4.0]]), mx.array([[3.0, 2.0, 1.0, 0.0]]), mx.array([[0.0, 0.0, 0.0, 4.0]])]
    (single,) = concept_maps(scores, (4, 4))
    assert np.allclose(single.reshape(-1), (np.array([4, 4, 4, 8]) - 4) / 4)
    pair = concept_maps([mx.array([[0.0, 1.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0]])], (4, 4))
    expected = np.exp([0, 1, 2, 3]) / (np.exp([0, 1, 2, 3]) + 1)
    assert np.allclose(pair[0].reshape(-1), expected, atol=1e-6)


# --- layer and step selection, through the real loop ------------------------------------------------


def test_layers_and_steps_are_checked_and_defaults_clamped():
    assert heatmap_layers((), 19) == (15, 16, 17, 18)
    assert heatmap_layers((), 2) == (1,)
    assert heatmap_layers((1, 0, 1), 2) == (0, 1)
    with pytest.raises(InvalidRequest, match="numbered 0 to 1"):
        heatmap_layers((2,), 2)
    with pytest.raises(InvalidRequest, match="has none"):  # a model of single-stream blocks only
        heatmap_layers((), 0)
    assert heatmap_steps((), 4) == (0, 1, 2, 3)
    assert heatmap_steps((), 4, first=2) == (2, 3)
    with pytest.raises(InvalidRequest, match="steps 2 to 3"):
        heatmap_steps((1,), 4, first=2)


def test_the_recorder_reads_only_the_chosen_steps_and_layers(tiny_dev):
    transformer = load_transformer(tiny_dev / "transformer")
    concepts = ConceptTokens(mx.zeros((1, 1, 32)), ((0, 1),))
    recorder = ConceptRecorder(transformer, concepts, layers=(0,), steps=(1, 3), first_step=1)
    inputs = random_inputs(transformer)
    for _ in range(3):  # steps 1, 2, 3
        assert np.array_equal(np.array(recorder(**inputs)), np.array(transformer(**inputs)))
    assert sorted(recorder.scores) == [(1, 0), (3, 0)]


def test_generating_with_concepts_makes_the_plain_image_and_one_map_per_concept(tiny_dev, tmp_path):
    common = ["--path", tiny_dev, "--prompt", PROMPT, "--steps", 3, "--height", 64, "--width", 48, "--seed", 3]
    plain = run_cli("generate", *common, "--output", tmp_path / "plain.png")
    ours = run_cli("concept", *common, "--concept", "red circle", "square", "--heatmap-timesteps", 0, 2,
                   "--output", tmp_path / "c.png")
    assert max_uint8_diff(ours, plain) == 0
    for kind in ("heatmap", "overlay"):
        for slug in ("red-circle", "square"):
            with Image.open(tmp_path / f"c_{kind}_{slug}.png") as picture:
                assert picture.size == (48, 64) and picture.mode == "RGB"

    request = GenerationRequest(model=str(tiny_dev), prompt=PROMPT, steps=3, height=64, width=48, seed=3)
    result = generate_with_concepts(ModelManager(), request, ConceptSettings(("red circle", "square"), (0,), (1,)))
    assert (result.layers, result.timesteps) == ((0,), (1,))
    assert result.maps.shape == (2, 4, 3)
    assert np.allclose(result.maps.sum(axis=0), 1, atol=1e-5)
    assert len(set(np.round(result.maps[0].reshape(-1), 4))) > 1  # the map is not flat
    with pytest.raises(InvalidRequest, match="Heatmap layer 5"):
        generate_with_concepts(ModelManager(), request, ConceptSettings(("square",), (5,)))


def test_the_concept_command_draws_wildcards_as_generate_does(tiny_dev, tmp_path):
    common = ["--path", tiny_dev, "--prompt", "a {red|blue|green} circle", "--steps", 1, "--height", 32, "--width",
              32, "--seed", 7, "--wildcards-dir", tmp_path]
    plain = run_cli("generate", *common, "--output", tmp_path / "plain.png")
    ours = run_cli("concept", *common, "--concept", "circle", "--output", tmp_path / "c.png")
    assert max_uint8_diff(ours, plain) == 0
    with Image.open(tmp_path / "c.png") as made:
        assert "{" not in json.loads(made.text["mflux_studio"])["request"]["prompt"]


def test_concepts_from_an_image_run_only_the_chosen_steps(tiny_dev, tmp_path):
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8))
    photo.save(tmp_path / "photo.png")
    request = GenerationRequest(model=str(tiny_dev), prompt=PROMPT, steps=4, image_path=str(tmp_path / "photo.png"))
    events = []
    result = concepts_from_image(ModelManager(), request, ConceptSettings(("circle",), (), (1, 3)),
                                 report=events.append)
    assert [(event.step, event.total) for event in events if not isinstance(event, Loading)] == [(1, 2), (2, 2)]
    assert (result.layers, result.timesteps) == ((1,), (1, 3))
    assert result.image.size == (80, 64)  # the photo's size snapped to 16
    assert result.maps.shape == (1, 4, 5) and result.maps.min() == 0 and result.maps.max() == 1

    run_cli("concept-from-image", "--path", tiny_dev, "--prompt", PROMPT, "--image-path", tmp_path / "photo.png",
            "--concept", "circle", "--steps", 2, "--output", tmp_path / "from.png")
    for name in ("from.png", "from_heatmap_circle.png", "from_overlay_circle.png"):
        with Image.open(tmp_path / name) as picture:
            assert picture.size == (80, 64)


# --- the web panel (its handler, on the real tiny model; no browser) ---------------------------------


def test_the_concept_panel_parses_its_fields():
    from webui.panels.concept import FROM_IMAGE, build_requests, concept_settings, parse_concepts, parse_indices

    assert parse_concepts(" dragon, red castle\nsky ,, ") == ("dragon", "red castle", "sky")
    assert parse_indices("15 16,17", "Layers") == (15, 16, 17) and parse_indices("", "Layers") == ()
    for text in ("15, x", "15 ²", "9" * 5000):  # '²' passes str.isdigit(); 5,000 digits are past what int() reads
        with pytest.raises(InvalidRequest, match="Layers must be whole numbers"):
            parse_indices(text, "Layers")
    with pytest.raises(InvalidRequest, match="at least one concept"):
        concept_settings({"concepts": " , "})
    with pytest.raises(InvalidRequest, match="Upload the image"):
        build_requests({"mode": FROM_IMAGE, "image": None}, None)


def test_the_concept_panel_streams_progress_and_keeps_maps_beside_the_history(tiny_dev, tmp_path):
    import gradio as gr

    from webui.panels import result_column
    from webui.panels.concept import GENERATE, run_concepts
    from webui.studio import Studio, StudioFolders, StudioOutputs

    with gr.Blocks():
        view, _, _ = result_column("test-concept")
        outputs = StudioOutputs(gr.Gallery(), gr.State([]), gr.Markdown())
    studio = Studio(manager=ModelManager(models_dir=tiny_dev.parent), folders=StudioFolders.default(tmp_path))
    studio.outputs = outputs
    values = {"model": str(tiny_dev), "prompt": PROMPT, "seed": 3, "random_seed": False, "batch_count": 1,
              "steps": "3", "guidance": "", "width": 48, "height": 64, "quantize": "off", "mode": GENERATE,
              "concepts": "red circle, square", "layers": "", "timesteps": "0 2", "image": None,
              **{f"lora_{i}": None for i in (1, 2, 3)}, **{f"lora_scale_{i}": 1.0 for i in (1, 2, 3)}}
    updates = list(run_concepts(studio, view, values, "session"))
    assert [u[view.status].count("<progress") for u in updates if view.status in u][1:4] == [1, 1, 1]
    final = updates[-1]
    assert "Done: red circle, square mapped over layers 1" in final[view.status]
    saved = [Path(path) for path, _ in final[view.results]]
    assert [p.name.split("_", 1)[-1] for p in saved[1:]] == [
        "heatmap_red-circle.png", "overlay_red-circle.png", "heatmap_square.png", "overlay_square.png"]
    assert [Path(path) for path, _ in studio.history()] == [saved[0]]  # the maps stay out of the history
    assert all(p.is_file() and p.parent.parent.name == "concepts" for p in saved[1:])
