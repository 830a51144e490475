"""DoRA (weight-decomposed LoRA) files: LyCORIS' `dora_scale` and PEFT's `lora_magnitude_vector`.

References, float32: lycoris-lora's own modules (LoCon and LoKr with weight_decompose, per output row and per input
column, at several multipliers) and PEFT's DoRA layer (at several adapter scales), each on a linear layer with a
bias; and a whole image through the CLI against diffusers' transformer with lycoris' merged weights. Tolerance:
1e-5 of the output's scale for a layer; uint8 max |diff| <= 2 for an image.
"""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten
from safetensors.torch import save_file

from mflux_core.errors import ModelLoadError
from mflux_core.lora.apply import add_lora, fuse_loras, remove_lora
from mflux_core.lora.formats import load_lora_file, read_lora
from mflux_core.lora.layers import LoRALinear
from mflux_core.models.transformer import load_transformer
from tests.fixtures import lora_files as lf
from tests.fixtures.tiny_flux import load_diffusers_pipeline
from tests.parity import UINT8_TOLERANCE, make_noise, max_uint8_diff, pack, run_cli

OUT_FEATURES, IN_FEATURES = 48, 40
LAYER_TOLERANCE = 1e-5
MIN_DORA_EFFECT = 20  # levels a DoRA must move the image by, or the image test proves nothing


def torch_linear(seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(IN_FEATURES, OUT_FEATURES)


def mlx_linear(reference: torch.nn.Linear) -> nn.Linear:
    layer = nn.Linear(IN_FEATURES, OUT_FEATURES)
    layer.weight, layer.bias = mx.array(reference.weight.detach().numpy()), mx.array(reference.bias.detach().numpy())
    return layer


def lycoris_module(kind: str, base: torch.nn.Linear, wd_on_out: bool, seed: int):
    """A LyCORIS module with weight_decompose, its factors and magnitudes random (trained-looking)."""
    from lycoris.modules.locon import LoConModule
    from lycoris.modules.lokr import LokrModule

    module_class, extra = (LoConModule, {"lora_dim": 4, "alpha": 2.0}) if kind == "locon" else (
        LokrModule, {"lora_dim": 2, "alpha": 1.0, "factor": 4, "decompose_both": True})
    module = module_class("lycoris_x_embedder", base, weight_decompose=True, wd_on_out=wd_on_out, **extra)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.startswith("org_module"):
                continue
            noise = torch.randn(parameter.shape, generator=generator)
            parameter.copy_(parameter * (1 + 0.3 * noise) if name == "dora_scale" else 0.3 * noise)
    return module.eval()


def lycoris_file_tensors(module) -> dict[str, np.ndarray]:
    """What LyCORIS saves for the module, under its wrapper's name for diffusers' x_embedder."""
    return {f"lycoris_x_embedder.{key}": value.detach().float().numpy() for key, value in
            module.custom_state_dict().items()}


def ours(tensors: dict[str, np.ndarray], base: nn.Module, scale: float, metadata=None) -> LoRALinear:
    lora = read_lora({key: mx.array(value) for key, value in tensors.items()}, metadata)
    layer = LoRALinear(base)
    layer.add("dora", lora.targets["x_embedder"], scale)
    return layer


def assert_close(ours_out, expected):
    ours_out, expected = np.asarray(ours_out), np.asarray(expected)
    assert np.abs(ours_out - expected).max() <= LAYER_TOLERANCE * np.abs(expected).max()


def lycoris_forward(module, base: torch.nn.Linear, multiplier: float, x: np.ndarray) -> np.ndarray:
    """The layer's output with the module applied at `multiplier`, by lycoris' own forward."""
    module.multiplier = multiplier
    module.apply_to()
    try:
        with torch.no_grad():
            return base(torch.from_numpy(x)).numpy()
    finally:
        module.restore()


@pytest.mark.parametrize("kind", ["locon", "lokr"])
@pytest.mark.parametrize("wd_on_out", [True, False])
def test_a_lycoris_dora_layer_matches_lycoris(kind, wd_on_out):
    """Against lycoris' forward (its LoKr get_merged_weight applies alpha / rank twice in 4.1.3; the forward once,
    as every other reader of the file does)."""
    base = torch_linear(seed=1)
    module = lycoris_module(kind, base, wd_on_out, seed=2)
    tensors = lycoris_file_tensors(module)
    assert tensors["lycoris_x_embedder.dora_scale"].shape == ((OUT_FEATURES, 1) if wd_on_out else (1, IN_FEATURES))
    x = np.random.default_rng(3).standard_normal((2, 5, IN_FEATURES)).astype(np.float32)
    weight, bias = base.weight.detach().numpy(), base.bias.detach().numpy()
    layer = ours(tensors, mlx_linear(base), 1.0)
    for multiplier in (1.0, 0.6, 1.4):
        layer.set_scale("dora", multiplier)
        assert_close(layer(mx.array(x)), lycoris_forward(module, base, multiplier, x))
        merged = (lycoris_forward(module, base, multiplier, np.eye(IN_FEATURES, dtype=np.float32)) - bias).T
        assert np.abs(np.asarray(layer.delta()[0]) - (merged - weight)).max() <= LAYER_TOLERANCE * np.abs(merged).max()
    assert np.abs(np.asarray(layer(mx.array(x))) - (x @ weight.T + bias)).max() > 0.05  # it does change the layer


@pytest.mark.parametrize("adapter_scale", [1.0, 0.5])
def test_a_peft_dora_layer_matches_peft(adapter_scale):
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.x_embedder = torch_linear(seed=4)

    holder = Holder()
    base = mlx_linear(holder.x_embedder)
    model = get_peft_model(holder, LoraConfig(r=4, lora_alpha=8, target_modules=["x_embedder"], use_dora=True))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                noise = torch.randn(parameter.shape, generator=generator)
                parameter.copy_(parameter * (1 + 0.3 * noise) if "magnitude" in name else 0.3 * noise)
    tensors = {f"transformer.{key.removeprefix('base_model.model.')}": value.numpy()
               for key, value in get_peft_model_state_dict(model).items()}
    assert "transformer.x_embedder.lora_magnitude_vector" in tensors, list(tensors)
    peft_layer = model.base_model.model.x_embedder
    peft_layer.scale_layer(adapter_scale)  # what diffusers' set_adapters(..., adapter_weights) does
    x = np.random.default_rng(6).standard_normal((3, IN_FEATURES)).astype(np.float32)
    with torch.no_grad():
        expected = peft_layer(torch.from_numpy(x)).numpy()
    layer = ours(tensors, base, adapter_scale, metadata={"lora_adapter_metadata": '{"lora_alpha": 8, "r": 4}'})
    assert_close(layer(mx.array(x)), expected)


# Kohya names (BFL modules): a fused q, k, v and a single block's fused q, k, v and MLP input with magnitudes per
# output row (split with the rows), unfused layers per output row and per input column. OneTrainer's (diffusers
# layers, its default per input column).
DORA_MODULES = {
    "kohya": {"double_blocks.0.img_attn.qkv": True, "double_blocks.1.img_attn.qkv": True,
              "single_blocks.0.linear1": True, "single_blocks.1.linear1": True, "double_blocks.1.img_mlp.0": True,
              "double_blocks.0.txt_attn.proj": False, "single_blocks.1.linear2": False},
    "onetrainer": {"transformer_blocks.0.attn.to_q": False, "transformer_blocks.0.attn.to_k": False,
                   "transformer_blocks.1.ff.net.0.proj": False, "single_transformer_blocks.0.proj_mlp": False,
                   "single_transformer_blocks.1.proj_out": False, "transformer_blocks.0.attn.to_add_out": True,
                   "single_transformer_blocks.1.attn.to_v": True, "transformer_blocks.1.attn.to_q": False,
                   "single_transformer_blocks.0.attn.to_q": False, "transformer_blocks.1.attn.to_out.0": True},
}
FILE_PREFIX = {"kohya": "lora_unet_", "onetrainer": "lora_transformer_"}
HEIGHT, WIDTH, STEPS, GUIDANCE = 64, 64, 3, 3.5
PROMPT = "a small red house by a lake"


def write_dora(path, tiny_dev, style: str, scale: float, seed: int = 7) -> tuple[object, dict[str, np.ndarray]]:
    """A DoRA file in `style`'s names for the tiny model, and the diffusers parameters' changes at `scale` by
    lycoris' own weight decomposition of the merged weights."""
    from lycoris.functional.general import weight_decompose

    d = lf.Dims.of(tiny_dev)
    base = dict(load_diffusers_pipeline(tiny_dev).transformer.named_parameters())
    rng = np.random.default_rng(seed)
    tensors, deltas = {}, {}
    for module, on_output in DORA_MODULES[style].items():
        targets = lf.bfl_modules(d)[module][0] if style == "kohya" else (module,)
        weight = np.concatenate([base[f"{t}.weight"].detach().numpy() for t in targets])
        (out_dim, in_dim), rank, alpha = weight.shape, 4, 2.0
        down = (rng.standard_normal((rank, in_dim)) / np.sqrt(in_dim)).astype(np.float32)
        up = (rng.standard_normal((out_dim, rank)) / np.sqrt(rank)).astype(np.float32)
        merged = weight + alpha / rank * up @ down
        norms = np.linalg.norm(merged, axis=1, keepdims=True) if on_output else np.linalg.norm(merged, axis=0)[None]
        magnitude = (norms * (1 + 0.5 * rng.standard_normal(norms.shape))).astype(np.float32)
        name = FILE_PREFIX[style] + module.replace(".", "_")
        tensors |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                    f"{name}.alpha": np.float32(alpha), f"{name}.dora_scale": magnitude}
        decomposed = weight_decompose(torch.from_numpy(merged), torch.from_numpy(magnitude), scale, on_output).numpy()
        deltas |= lf.bfl_delta_to_diffusers(module, targets, decomposed - weight, d)
    save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}, str(path))
    return path, deltas


@pytest.mark.parametrize("style, scale", [("kohya", 1.0), ("kohya", 0.7), ("onetrainer", 0.8)])
def test_a_dora_file_makes_diffusers_image_of_lycoris_merged_weights(tiny_dev, tmp_path, style, scale):
    dora, deltas = write_dora(tmp_path / "dora.safetensors", tiny_dev, style, scale)
    noise = make_noise(tmp_path, (1, 4, HEIGHT // 8, WIDTH // 8), seed=11)
    common = ["generate", "--path", tiny_dev, "--prompt", PROMPT, "--steps", STEPS, "--height", HEIGHT, "--width",
              WIDTH, "--guidance", GUIDANCE, "--init-noise", noise, "--dtype", "float32"]
    ours_image = run_cli(*common, "--lora-paths", dora, "--lora-scales", scale, "--output", tmp_path / "ours.png")
    base_image = run_cli(*common, "--output", tmp_path / "base.png")
    pipe = load_diffusers_pipeline(tiny_dev)
    lf.merge_into(pipe.transformer, deltas)
    expected = pipe(PROMPT, height=HEIGHT, width=WIDTH, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                    latents=pack(np.load(noise)), output_type="pil").images[0]
    assert max_uint8_diff(ours_image, expected) <= UINT8_TOLERANCE
    assert max_uint8_diff(expected, base_image) > MIN_DORA_EFFECT
    assert load_lora_file(dora).format == f"{style} DoRA"


def test_a_dora_is_removed_and_baked_in_exactly(tiny_dev, tmp_path):
    """Taking a DoRA off restores the layers' outputs; baking it in (save) makes the weights lycoris' merge makes."""
    dora, deltas = write_dora(tmp_path / "dora.safetensors", tiny_dev, "kohya", 0.8)
    transformer = load_transformer(tiny_dev / "transformer", dtype=mx.float32)
    before = {k: np.asarray(v) for k, v in dict(tree_flatten(transformer.parameters())).items()}
    add_lora(transformer, load_lora_file(dora), "dora", 0.8)
    remove_lora(transformer, "dora")
    assert all(np.array_equal(np.asarray(v), before[k]) for k, v in tree_flatten(transformer.parameters()))
    add_lora(transformer, load_lora_file(dora), "dora", 0.8)
    fuse_loras(transformer)
    after = dict(tree_flatten(transformer.parameters()))
    for name, delta in deltas.items():
        assert np.abs(np.asarray(after[name]) - before[name] - delta).max() <= 1e-5 * np.abs(before[name]).max(), name


def test_damaged_or_unappliable_magnitudes_are_refused_with_a_sentence():
    down, up = mx.zeros((2, 8)), mx.zeros((24, 2))
    fused = {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": down,
             "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": up}
    with pytest.raises(ModelLoadError, match=r"^The DoRA module double_blocks.0.img_attn.qkv keeps its magnitudes "
                                             r"per input column over layers the studio holds apart"):
        read_lora(fused | {"lora_unet_double_blocks_0_img_attn_qkv.dora_scale": mx.ones((1, 8))})
    with pytest.raises(ModelLoadError, match=r"^The DoRA module double_blocks.0.img_attn.qkv is damaged: its "
                                             r"magnitudes are 5x1 for a 24x8 layer.$"):
        read_lora(fused | {"lora_unet_double_blocks_0_img_attn_qkv.dora_scale": mx.ones((5, 1))})
