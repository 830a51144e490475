"""Upscaler models (ESRGAN, Real-ESRGAN, 4x-UltraSharp, ...): torch checkpoints read without torch, each network
equal to spandrel's float32 module (what ComfyUI runs them with) on tiny random weights saved in the layouts people
download, tiled and repeated passes as A1111 runs them, the memory plan against MLX's measured peak, and the engine's
uses: the hires fix, the Upscale tool (in one piece and in tiles) and the CLI, each refusing an unknown name.
"""

import collections
import zipfile

import mlx.core as mx
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from mflux_core import cli
from mflux_core.errors import InvalidRequest, ModelLoadError
from mflux_core.events import Step
from mflux_core.images.io import save_png_atomic
from mflux_core.manager import ModelManager
from mflux_core.metadata import request_from_metadata
from mflux_core.presets import settings_from_a1111
from mflux_core.request import GenerationRequest
from mflux_core.upscaler_files import upscaler_file, upscaler_files
from mflux_core.upscaler_models import TILE, model_pass, passes_for, read_upscaler, upscale_bytes, upscale_with
from mflux_core.weights.torch_pickle import read_torch_state_dict
from tests.fixtures.upscaler_models import (
    bsrgan_names, picture, random_compact, random_rrdb, real_esrgan_names, reference_upscale, write,
)

PROMPT = "a red circle on a blue background"


# ----- reading torch checkpoints -------------------------------------------------------------------------------


@pytest.mark.parametrize("zipped", [True, False])
def test_a_torch_checkpoint_is_read_without_torch_with_its_dtypes_and_views(tmp_path, zipped):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = collections.OrderedDict(
        plain=torch.randn(3, 5), half=torch.randn(7).half(), brain=torch.randn(2, 3).bfloat16(),
        view=base[:, 1::2], long=torch.arange(4), parameter=torch.nn.Parameter(torch.randn(2)))
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": state, "epoch": 3, "note": "trained"}, path, _use_new_zipfile_serialization=zipped)
    read = read_torch_state_dict(path)
    assert set(read) == {f"state_dict.{name}" for name in state}
    for name, tensor in state.items():
        expected = tensor.detach().float().numpy() if tensor.dtype == torch.bfloat16 else tensor.detach().numpy()
        assert read[f"state_dict.{name}"].dtype == expected.dtype and np.array_equal(read[f"state_dict.{name}"],
                                                                                     expected), name


class _RunsAShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


def test_a_tensor_that_reaches_past_its_storage_is_refused_not_read(tmp_path):
    path = tmp_path / "crafted.pth"
    torch.save({"weight": torch.zeros(4)}, path)
    archive = zipfile.ZipFile(path)
    entries = {name: archive.read(name) for name in archive.namelist()}
    pickled = next(name for name in entries if name.endswith("data.pkl"))
    entries[pickled] = entries[pickled].replace(b"K\x04\x85", b"J\x00\x00\x00\x01\x85", 1)  # size 4 -> 2**24
    with zipfile.ZipFile(path, "w") as crafted:
        for name, data in entries.items():
            crafted.writestr(name, data)
    with pytest.raises(ModelLoadError, match=r"a tensor reaches past its storage"):
        read_torch_state_dict(path)


def test_a_checkpoint_that_asks_for_other_code_is_refused_and_none_of_it_runs(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "payload": _RunsAShellCommand(marker)}, path)
    with pytest.raises(ModelLoadError, match=r"^evil\.pth is not a readable PyTorch checkpoint of tensors \(it asks "
                                             r"for posix\.system, which a plain state dict does not\)\.$"):
        read_torch_state_dict(path)
    assert not marker.exists()


# ----- each network equals spandrel's ------------------------------------------------------------------------


CASES = {  # name: (state, layout)
    "ESRGAN x4, original names": (lambda: random_rrdb(scale=4), "torch legacy"),
    "ESRGAN x2": (lambda: random_rrdb(scale=2), "torch zip"),
    "ESRGAN x1 (a restoration model)": (lambda: random_rrdb(scale=1), "safetensors"),
    "ESRGAN+ (1x1 paths)": (lambda: random_rrdb(scale=4, plus=True), "torch zip"),
    "Real-ESRGAN x4plus names": (lambda: real_esrgan_names(random_rrdb(scale=4)), "training checkpoint"),
    "Real-ESRGAN x2plus (pixel unshuffle)": (lambda: real_esrgan_names(random_rrdb(scale=4, in_nc=12,
                                                                                   shuffle_factor=2)), "torch zip"),
    "BSRGAN names": (lambda: bsrgan_names(random_rrdb(scale=4)), "safetensors"),
    "Real-ESRGAN Compact (general-x4v3)": (lambda: random_compact(), "torch zip"),
    "Real-ESRGAN Compact x2": (lambda: random_compact(upscale=2), "safetensors"),
}


@pytest.mark.parametrize("case", CASES)
def test_each_network_equals_spandrels_module_through_the_real_loading_path(tmp_path, case):
    make, layout = CASES[case]
    state = make()
    path = tmp_path / "upscalers" / ("model.safetensors" if layout == "safetensors" else "model.pth")
    write(state, path, layout)
    model = read_upscaler(path)
    image = picture(37, 30)  # odd sides: the unshuffled model pads them as spandrel does
    expected = reference_upscale(state, image)
    assert model.scale * 37 == expected.shape[1] and model.scale * 30 == expected.shape[0]
    ours = np.asarray(model_pass(model, image, None))  # one tile: the whole image
    assert ours.shape == expected.shape
    assert np.abs(ours.astype(int) - expected).max() <= 1  # float32 rounding at a level's edge


def test_a_large_image_is_upscaled_in_blended_tiles_close_to_the_whole(tmp_path):
    state = random_rrdb(scale=2, num_blocks=1)
    write(state, tmp_path / "x2.pth")
    model = read_upscaler(tmp_path / "x2.pth")
    image = picture(TILE + 140, TILE + 20)  # 2 x 2 tiles of 192 px sharing at least 8
    tiled = np.asarray(model_pass(model, image, None)).astype(int)
    difference = np.abs(tiled - reference_upscale(state, image))
    # tiles see less context near their edges than the whole image does: A1111's 8 px overlap leaves small seams
    assert difference.mean() < 0.5 and np.percentile(difference, 99) <= 4


def test_passes_repeat_until_the_image_covers_the_target_then_lanczos_makes_it_exact(tmp_path):
    write(random_rrdb(scale=2, num_blocks=1), tmp_path / "x2.pth")
    model = read_upscaler(tmp_path / "x2.pth")
    assert [passes_for(2, (40, 30), target) for target in [(40, 30), (80, 60), (81, 60), (320, 240), (700, 500)]] \
        == [0, 1, 2, 3, 3]
    image = picture(40, 30)
    twice = model_pass(model, model_pass(model, image, None), None)
    result = upscale_with(model, image, (150, 112))
    assert np.array_equal(np.asarray(result), np.asarray(twice.resize((150, 112), Image.Resampling.LANCZOS)))


@pytest.mark.parametrize("make", [lambda: random_rrdb(scale=4, num_filters=64, num_blocks=1),
                                  lambda: random_compact(num_feat=64, num_conv=8)], ids=["ESRGAN", "Compact"])
def test_the_estimated_peak_is_within_a_quarter_of_what_mlx_measures(tmp_path, make):
    write(make(), tmp_path / "wide.pth")
    model = read_upscaler(tmp_path / "wide.pth")
    mx.eval(model.parameters())
    image = picture(TILE, TILE)
    mx.clear_cache()
    before = mx.get_active_memory()
    mx.reset_peak_memory()
    model_pass(model, image, None)
    measured = mx.get_peak_memory() - before
    assert 0.75 * measured <= model.net.peak_bytes(TILE, TILE) <= 1.25 * measured
    assert upscale_bytes(model, image.size, (4 * TILE, 4 * TILE)) >= measured  # the plan's margin on top


def test_files_that_are_no_upscaler_model_are_refused_naming_the_file(tmp_path):
    save_file({"lora_unet_a.lora_down.weight": torch.zeros(4, 8)}, str(tmp_path / "lora.safetensors"))
    with pytest.raises(ModelLoadError, match=r"^The upscaler lora\.safetensors cannot be used: it is not an "
                                             r"ESRGAN, Real-ESRGAN or Real-ESRGAN Compact model \(other upscaler "
                                             r"architectures, such as SwinIR, DAT or HAT, are not supported\)$"):
        read_upscaler(tmp_path / "lora.safetensors")
    save_file({"conv_first.weight": torch.zeros(180, 3, 3, 3), "layers.0.residual_group.blocks.0.attn.qkv.weight":
               torch.zeros(540, 180)}, str(tmp_path / "swinir.safetensors"))  # SwinIR shares conv_first with ESRGAN
    with pytest.raises(ModelLoadError, match=r"^The upscaler swinir\.safetensors cannot be used: it is not an ESRGAN"):
        read_upscaler(tmp_path / "swinir.safetensors")
    partial = {k: v for k, v in random_rrdb().items() if "RDB2.conv3" not in k}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ModelLoadError, match=r"^The upscaler partial\.safetensors cannot be used: it lacks "
                                             r"'model\.1\.sub\.0\.RDB2\.conv3\.0\.weight' of its network"):
        read_upscaler(tmp_path / "partial.safetensors")
    write(random_rrdb(), tmp_path / "cut.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "cut.pth").read_bytes()[:5000])
    with pytest.raises(ModelLoadError, match=r"^The upscaler cut\.pth cannot be used: cut\.pth is not a readable "
                                             r"PyTorch checkpoint of tensors"):
        read_upscaler(tmp_path / "cut.pth")


def test_models_are_found_in_our_a1111s_and_comfyuis_folders_by_name_and_a1111s_labels(tmp_path):
    for folder, name in [("upscalers", "4x-UltraSharp.pth"), ("ESRGAN", "4x_NMKD-Siax.pth"),
                         ("RealESRGAN", "RealESRGAN_x4plus.pth"), ("upscale_models", "2x-Compact.safetensors"),
                         ("upscalers", "notes.txt")]:
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / name).write_bytes(b"x")
    assert list(upscaler_files(tmp_path)) == ["4x-UltraSharp", "4x_NMKD-Siax", "RealESRGAN_x4plus", "2x-Compact"]
    assert upscaler_file(tmp_path, "R-ESRGAN 4x+") == tmp_path / "RealESRGAN" / "RealESRGAN_x4plus.pth"
    assert upscaler_file(tmp_path, "R-ESRGAN 2x+") is None


@pytest.mark.parametrize("theirs, ours", [("4x-UltraSharp", "4x-UltraSharp"), ("R-ESRGAN 4x+", "R-ESRGAN 4x+"),
                                          ("Latent (bicubic antialiased)", None), ("SwinIR 4x", None),
                                          ("Lanczos", "Lanczos")])
def test_an_a1111_pngs_hires_upscaler_is_kept_when_it_names_a_model_file(theirs, ours):
    settings = settings_from_a1111("a cat\nSteps: 20, Seed: 1, Size: 512x512, Denoising strength: 0.7, "
                                   f"Hires upscale: 2, Hires upscaler: {theirs}")
    assert settings.get("hires_upscaler") == ours


# ----- the engine's uses on the demo models --------------------------------------------------------------------


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("upscaler-models")
    write(random_rrdb(seed=3, scale=2, num_blocks=1), root / "upscalers" / "2x-Tiny.pth")
    write(random_compact(seed=4), root / "ESRGAN" / "4x-TinyCompact.safetensors", "safetensors")
    return root


@pytest.fixture(scope="module")
def manager(models_dir):
    return ModelManager(models_dir=models_dir)


@pytest.fixture(scope="module")
def small_image(manager, tmp_path_factory):
    image = manager.generate(GenerationRequest(model="demo", prompt=PROMPT, seed=3, steps=3, width=64,
                                               height=48)).image
    return save_png_atomic(image, tmp_path_factory.mktemp("small") / "small.png")


def test_the_hires_fix_upscales_the_first_pass_with_the_model(manager, models_dir):
    request = GenerationRequest(model="demo", prompt=PROMPT, seed=7, steps=3, width=64, height=64, dtype="float32")
    first = manager.generate(request).image
    steps = []
    result = manager.generate(request.with_(hires_scale=2.0, hires_upscaler="2x-Tiny", hires_strength=0.5),
                              report=lambda event: steps.append(event) if isinstance(event, Step) else None)
    # the first pass's 3 steps, the model's one tile (its own count), the second pass's last 2 of 3
    assert [(e.step, e.total, e.stage) for e in steps] == [
        (1, 5, "hires fix pass 1 of 2"), (2, 5, "hires fix pass 1 of 2"), (3, 5, "hires fix pass 1 of 2"),
        (1, 1, "upscaling with 2x-Tiny"), (4, 5, "hires fix pass 2 of 2"), (5, 5, "hires fix pass 2 of 2")]
    assert result.image.size == (128, 128) and result.request.hires_upscaler == "2x-Tiny"
    expected = upscale_with(read_upscaler(models_dir / "upscalers" / "2x-Tiny.pth"), first, (128, 128))
    assert np.array_equal(np.asarray(result.before), np.asarray(expected))
    assert "Hires upscaler: 2x-Tiny" in result.text_chunks["parameters"]


def test_the_upscale_tool_regenerates_what_the_model_upscaled_in_one_piece_and_in_tiles(manager, models_dir,
                                                                                      small_image, tmp_path):
    model = read_upscaler(models_dir / "ESRGAN" / "4x-TinyCompact.safetensors")
    upscaled = upscale_with(model, Image.open(small_image), (128, 96))
    upscaled_path = save_png_atomic(upscaled, tmp_path / "upscaled.png")
    for extra in ({}, {"tile_size": 64, "tile_overlap": 16}):
        request = GenerationRequest(tool="upscale", model="demo", prompt=PROMPT, seed=5, steps=4, width=128,
                                    height=96, dtype="float32", image_path=str(small_image),
                                    extra={**extra, "upscaler": "4x-TinyCompact"})
        steps = []
        result = manager.generate(request, report=lambda event: steps.append(event) if isinstance(event, Step) else 0)
        assert (steps[0].step, steps[0].stage) == (1, "upscaling with 4x-TinyCompact"), extra  # its tile, then FLUX.1's
        # the same as the Lanczos upscaler run on the model's upscale, which is already the output's size
        by_hand = manager.generate(request.with_(image_path=str(upscaled_path),
                                                 extra={**extra, "upscaler": "Lanczos"}))
        assert np.array_equal(np.asarray(result.image), np.asarray(by_hand.image)), extra
        if extra:  # in tiles the result carries the image the tiles started from
            assert np.array_equal(np.asarray(result.before), np.asarray(upscaled))
        assert "Input 64x48 upscaled to 256x192 by 4x-TinyCompact (x4)." in result.notes
        assert result.request.controlnet_strength is None and result.request.image_strength == 0.65
    events = []  # reports and Stop's checks in the order they came
    manager.generate(request.with_(extra={"upscaler": "4x-TinyCompact"}), report=events.append,
                     cancelled=lambda: events.append("Stop?") and False)
    tile = next(i for i, e in enumerate(events) if isinstance(e, Step) and e.stage.startswith("upscaling"))
    assert events[tile - 1] == "Stop?"  # Stop is heard before the model's tile, as between any two of them


def test_upscaler_only_is_the_models_image_alone_with_no_flux_model_loaded(models_dir, small_image):
    manager = ModelManager(models_dir=models_dir)  # nothing resident yet
    model = read_upscaler(models_dir / "upscalers" / "2x-Tiny.pth")
    request = GenerationRequest(tool="upscale", model="demo", prompt="", image_path=str(small_image),
                                extra={"upscaler": "2x-Tiny", "upscaler_only": True, "upscale_factor": 3})
    steps = []
    result = manager.generate(request, report=lambda event: steps.append(event) if isinstance(event, Step) else None)
    assert result.image.size == (192, 144)  # 3x exactly (no FLUX.1 pass: no multiple of 16 needed)
    expected = upscale_with(model, Image.open(small_image), (192, 144))  # two 2x passes, then Lanczos
    assert np.array_equal(np.asarray(result.image), np.asarray(expected))
    assert manager.resident.load_counts["transformer"] == 0
    assert [(e.step, e.total) for e in steps] == [(1, 2), (2, 2)] and steps[0].stage == "upscaling with 2x-Tiny"
    assert "Size: 192x144, Postprocess upscaler: 2x-Tiny, Tool: upscale" in result.text_chunks["parameters"]
    replayed = manager.generate(request_from_metadata(result.metadata))
    assert np.array_equal(np.asarray(replayed.image), np.asarray(result.image))
    lanczos = manager.generate(request.with_(extra={"upscaler": "Lanczos", "upscaler_only": True}))
    assert np.array_equal(np.asarray(lanczos.image),
                          np.asarray(Image.open(small_image).convert("RGB").resize((128, 96), Image.LANCZOS)))
    for extra, words in [({"upscaler_only": True}, "Upscaler only needs an upscaler model or Lanczos"),
                         ({"upscaler": "2x-Tiny", "upscaler_only": True, "tile_size": 64},
                          "tiles and an image strength are for a FLUX.1 pass")]:
        with pytest.raises(InvalidRequest, match=words):
            manager.generate(request.with_(extra=extra))


@pytest.mark.parametrize("change", [{"hires_scale": 2.0, "hires_upscaler": "4x-UltraSharp"},
                                    {"tool": "upscale", "extra": {"upscaler": "4x-UltraSharp"}}])
def test_an_upscaler_model_not_in_the_models_folder_is_refused_naming_those_that_are(manager, small_image, change):
    request = GenerationRequest(model="demo", prompt=PROMPT, steps=2, width=64, height=64,
                                image_path=str(small_image) if change.get("tool") else None).with_(**change)
    with pytest.raises(InvalidRequest, match=r"^The upscaler '4x-UltraSharp' is not one the studio has: use Lanczos, "
                                             r"ControlNet upscaler, or an upscaler model in the models folder's "
                                             r"upscalers/ \(2x-Tiny, 4x-TinyCompact\)\.$"):
        manager.generate(request)


def test_the_cli_lists_the_upscalers_and_upscales_with_one(models_dir, small_image, tmp_path, capsys):
    assert cli.main(["upscalers", "--models-dir", str(models_dir)]) == 0
    listed = capsys.readouterr().out
    assert "2x-Tiny  (" in listed and "ESRGAN (1 RRDB blocks, 16 features), x2" in listed
    assert "Real-ESRGAN Compact (6 convolutions, 16 features), x4" in listed
    output = tmp_path / "big.png"
    assert cli.main(["upscale", "--model", "demo", "--models-dir", str(models_dir), "--prompt", PROMPT,
                     "--image-path", str(small_image), "--upscaler", "2x-Tiny", "--upscale-factor", "2",
                     "--steps", "2", "--output", str(output)]) == 0
    assert "upscaled to 128x96 by 2x-Tiny (x2)" in capsys.readouterr().err
    with Image.open(output) as image:
        assert image.size == (128, 96)
    alone = tmp_path / "alone.png"
    assert cli.main(["upscale", "--models-dir", str(models_dir), "--image-path", str(small_image), "--upscaler",
                     "2x-Tiny", "--upscaler-only", "--upscale-factor", "2", "--output", str(alone)]) == 0
    with Image.open(alone) as image:
        assert image.size == (128, 96) and "Postprocess upscaler: 2x-Tiny" in image.info["parameters"]
    assert cli.main(["upscale", "--model", "demo", "--models-dir", str(models_dir), "--prompt", PROMPT,
                     "--image-path", str(small_image), "--upscaler", "nope", "--output",
                     str(tmp_path / "no.png")]) == 1
    assert "The upscaler 'nope' is not one the studio has" in capsys.readouterr().err
