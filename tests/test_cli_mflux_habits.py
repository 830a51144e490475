"""What mflux users' command lines and files do, unchanged: mflux's --metadata JSON and the JSON it writes into an
image's EXIF restore with --config-from-metadata; an output is never overwritten (image_1.png); --prompt - is read
once for every seed; --seed wins over --auto-seeds, which is off at 0 or less; sizes are rounded down to multiples
of 16; mflux's model names; --base-model names what a complete folder already holds; a file or folder that cannot
be read or written is one sentence, never a traceback."""

import io
import json

import numpy as np
from PIL import ExifTags, Image

from mflux_core.cli import main
from tests.parity import random_image

COMMON = ["--prompt", "a red house", "--steps", "2", "--width", "64", "--height", "64"]


def saved_request(path) -> dict:
    with Image.open(path) as image:
        return json.loads(image.info["mflux_studio"])["request"]


def mflux_metadata(version: str) -> dict:
    """The keys mflux's --metadata writes (0.9.6: no size; 0.24: its size and negative prompt)."""
    metadata = {"mflux_version": version, "model": "black-forest-labs/FLUX.1-dev", "base_model": "ModelConfig.dev",
                "seed": 4242, "steps": 3, "guidance": 4.5, "precision": "mlx.core.bfloat16", "quantize": None,
                "generation_time_seconds": 12.3, "lora_paths": None, "lora_scales": None, "image_path": None,
                "image_strength": None, "controlnet_image_path": None, "controlnet_strength": None,
                "masked_image_path": None, "depth_image_path": None, "redux_image_paths": None,
                "redux_image_strengths": None, "prompt": "a blue square"}
    return {**metadata, "height": 48, "width": 80, "negative_prompt": None} if version == "0.24.0" else metadata


def test_mflux_metadata_restores_from_its_json_and_its_images_exif(tiny_dev, tmp_path, capsys):
    old, new = mflux_metadata("0.9.6"), mflux_metadata("0.24.0")
    (tmp_path / "old.json").write_text(json.dumps(old, indent=4))
    (tmp_path / "new.json").write_text(json.dumps(new, indent=4))
    for name, comment in (("old.png", json.dumps(old).encode()),  # 0.9.6: the JSON as it is
                          ("new.png", b"ASCII\0\0\0" + json.dumps(new).encode())):  # EXIF 2.3's encoding name first
        exif = Image.Exif()
        exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = comment
        Image.new("RGB", (64, 64), "blue").save(tmp_path / name, exif=exif.tobytes())  # a PNG's eXIf chunk
    unsized = ["--width", "64", "--height", "64"]  # 0.9.6 records no size (the model's 1024 then)
    for name, size, flags in (("old.json", (64, 64), unsized), ("new.json", (80, 48), []),
                              ("old.png", (64, 64), unsized), ("new.png", (80, 48), [])):
        output = tmp_path / f"from-{name}.png"
        assert main(["generate", "--path", str(tiny_dev), "--config-from-metadata", str(tmp_path / name), *flags,
                     "--output", str(output)]) == 0, capsys.readouterr().err
        request = saved_request(output)
        assert (request["prompt"], request["seed"], request["steps"], request["guidance"]) == (
            "a blue square", 4242, 3, 4.5), name
        assert Image.open(output).size == size, name
    # as mflux's -C: its model, quantization and input image (a path on this machine) too
    random_image(64, 64, seed=2).save(tmp_path / "photo.png")
    (tmp_path / "i2i.json").write_text(json.dumps({**old, "model": "black-forest-labs/FLUX.1-dev", "quantize": 8,
                                                   "image_path": str(tmp_path / "photo.png"), "image_strength": 0.5}))
    from mflux_core.command_args import metadata_request

    restored = metadata_request(tmp_path / "i2i.json", tmp_path)
    assert (restored.model, restored.quantize, restored.image_path, restored.image_strength) == (
        "dev", 8, str(tmp_path / "photo.png"), 0.5)


def test_outputs_are_never_overwritten_as_mflux_numbers_them(tiny_dev, tmp_path, capsys):
    output = tmp_path / "image.png"
    for seed in ("1", "2"):
        assert main(["generate", "--path", str(tiny_dev), *COMMON, "--seed", seed, "--output", str(output),
                     "--metadata"]) == 0
    assert f"Saved {tmp_path / 'image_1.png'}" in capsys.readouterr().out
    assert (saved_request(output)["seed"], saved_request(tmp_path / "image_1.png")["seed"]) == (1, 2)
    assert json.loads((tmp_path / "image_1.json").read_text())["request"]["seed"] == 2


def test_the_prompt_from_standard_input_is_every_seeds(tiny_dev, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("a prompt from a pipe\n"))
    assert main(["generate", "--path", str(tiny_dev), *COMMON[2:], "--prompt", "-", "--seed", "1", "2",
                 "--output", str(tmp_path / "piped.png")]) == 0
    for seed in (1, 2):
        assert saved_request(tmp_path / f"piped_seed_{seed}.png")["prompt"] == "a prompt from a pipe"


def test_seed_wins_over_auto_seeds_which_are_off_at_zero_or_less(tiny_dev, tmp_path, capsys):
    assert main(["generate", "--path", str(tiny_dev), *COMMON, "--auto-seeds", "2", "--seed", "5",
                 "--output", str(tmp_path / "given.png")]) == 0
    assert "Note: --auto-seeds 2 is not used: --seed gives the seeds." in capsys.readouterr().err
    assert [path.name for path in tmp_path.glob("given*.png")] == ["given.png"]
    assert saved_request(tmp_path / "given.png")["seed"] == 5
    assert main(["generate", "--path", str(tiny_dev), *COMMON, "--auto-seeds", "-1",
                 "--output", str(tmp_path / "off.png")]) == 0
    assert (tmp_path / "off.png").is_file()


def test_sizes_are_rounded_down_to_multiples_of_16_with_a_note(tiny_dev, tmp_path, capsys):
    assert main(["generate", "--path", str(tiny_dev), "--prompt", "x", "--steps", "1", "--width", "90",
                 "--height", "70", "--output", str(tmp_path / "odd.png")]) == 0
    assert Image.open(tmp_path / "odd.png").size == (80, 64)
    err = capsys.readouterr().err
    assert "Note: --width 90 rounded down to 80, a multiple of 16." in err
    assert "Note: --height 70 rounded down to 64, a multiple of 16." in err


def test_mflux_model_names_and_a_base_model_that_supplies_nothing(tiny_kontext, tmp_path, monkeypatch, capsys):
    """`--model dev-kontext` is FLUX.1-Kontext-dev from the Hugging Face cache; `--base-model schnell` beside a
    complete folder is a label, as in mflux, and downloads nothing (schnell is not in this empty cache)."""
    from huggingface_hub import constants

    snapshot = tmp_path / "hub" / "models--black-forest-labs--FLUX.1-Kontext-dev" / "snapshots" / "abc123"
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(tiny_kontext, target_is_directory=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reference = random_image(64, 64, seed=3)
    reference.save(tmp_path / "reference.png")
    edit = ["kontext", "--prompt", "make it red", "--steps", "2", "--seed", "3", "--image-path",
            str(tmp_path / "reference.png")]
    for name, model in (("named", ["--model", "dev-kontext"]), ("path", ["--path", str(tiny_kontext)]),
                        ("labelled", ["--path", str(tiny_kontext), "--base-model", "schnell"])):
        assert main([*edit, *model, "--output", str(tmp_path / f"{name}.png")]) == 0, capsys.readouterr().err
    pixels = [np.asarray(Image.open(tmp_path / f"{name}.png")) for name in ("named", "path", "labelled")]
    assert np.array_equal(pixels[0], pixels[1]) and np.array_equal(pixels[1], pixels[2])


def test_unreadable_and_unwritable_places_are_one_sentence(tiny_dev, tmp_path, capsys):
    command = ["generate", "--path", str(tiny_dev), *COMMON, "--seed", "1"]
    assert main(["generate", "--config-from-metadata", str(tmp_path / "nope.json")]) == 1
    assert capsys.readouterr().err == f"Error: {tmp_path / 'nope.json'}: No such file or directory.\n"
    (tmp_path / "steps").write_text("a file where the folder would go")
    assert main([*command, "--stepwise-image-output-dir", str(tmp_path / "steps")]) == 1
    assert capsys.readouterr().err.startswith(f"Error: Cannot make the folder {tmp_path / 'steps'} for the step "
                                              "images (File exists).")
    (tmp_path / "kept.json").mkdir()  # the sidecar cannot be written: the image is saved all the same
    assert main([*command, "--output", str(tmp_path / "kept.png"), "--metadata"]) == 0
    assert f"Warning: could not write the metadata to {tmp_path / 'kept.json'} (Is a directory)." in \
        capsys.readouterr().err
    assert (tmp_path / "kept.png").is_file()
    (tmp_path / "taken").write_text("a file where the model's folder would go")
    assert main(["save", "--model", str(tiny_dev), "--path", str(tmp_path / "taken" / "model")]) == 1
    assert f"Error: Cannot write a model folder at {tmp_path / 'taken' / 'model'} (" in capsys.readouterr().err


def test_mflux_spellings_of_flags(tiny_dev, tmp_path, monkeypatch, capsys):
    """-C, -B (stopping on a low battery, read through psutil), --lora-paths with none, upscale's 2x / auto sizes,
    in-context's --reference-image and concept-from-image's --input-image-path."""
    from collections import namedtuple

    import psutil

    from mflux_core.cli import build_parser

    command = ["generate", "--path", str(tiny_dev), *COMMON, "--seed", "1"]
    assert main([*command, "--output", str(tmp_path / "first.png"), "--metadata"]) == 0
    assert main(["generate", "--path", str(tiny_dev), "-C", str(tmp_path / "first.json"), "--lora-paths",
                 "--output", str(tmp_path / "again.png")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "again.png")), np.asarray(Image.open(tmp_path / "first.png")))
    battery = namedtuple("Battery", "percent secsleft power_plugged")
    monkeypatch.setattr(psutil, "sensors_battery", lambda: battery(8.0, 600, False))
    assert main([*command, "-B", "10", "--output", str(tmp_path / "drained.png")]) == 1
    assert "Error: Stopped: the battery is at 8%, at or below --battery-percentage-stop-limit 10." in \
        capsys.readouterr().err
    monkeypatch.setattr(psutil, "sensors_battery", lambda: battery(8.0, 600, True))  # on mains it runs
    assert main([*command, "-B", "10", "--output", str(tmp_path / "plugged.png")]) == 0
    parser = build_parser()
    assert parser.parse_args(["in-context", "--reference-image", "r.png"]).image_path == "r.png"
    assert parser.parse_args(["concept-from-image", "--input-image-path", "i.png", "--concept", "cat"]).image_path \
        == "i.png"
    random_image(32, 32, seed=4).save(tmp_path / "small.png")
    upscale = ["upscale", "--image-path", str(tmp_path / "small.png"), "--prompt", "x", "--steps", "1"]
    assert main([*upscale, "--height", "2x", "--width", "2x", "--output", str(tmp_path / "twice.png")]) == 0
    assert Image.open(tmp_path / "twice.png").size == (64, 64)  # on the demo model, no FLUX.1 being on disk
    assert main([*upscale, "--height", "2x", "--width", "64", "--output", str(tmp_path / "mixed.png")]) == 1
    assert "Give --width and --height as the same factor of the input's size" in capsys.readouterr().err


def test_mflux_024_spellings_equal_the_flags_they_stand_for(tiny_dev, tmp_path, capsys):
    """--lora PATH [SCALE], --image PATH [STRENGTH], --make-conf, --config-from-conf, --no-exif, --scheduler linear,
    --mlx-cache-limit-gb and --vae-tile-size, as mflux 0.24 prefers them."""
    from tests.fixtures import lora_files as lf

    dims = lf.Dims.of(tiny_dev)
    first, second = (lf.write_diffusers_lora(tmp_path / f"{name}.safetensors", dims, seed=seed)[0]
                     for name, seed in (("a", 1), ("b", 2)))
    command = ["generate", "--path", str(tiny_dev), *COMMON, "--seed", "3"]

    def pixels(name):
        return np.asarray(Image.open(tmp_path / name), dtype=np.int16)

    assert main([*command, "--lora-paths", str(first), str(second), "--lora-scales", "0.7", "1",
                 "--output", str(tmp_path / "old.png")]) == 0
    assert main([*command, "--lora", str(first), "0.7", "--lora", str(second), "--make-conf", "--scheduler", "linear",
                 "--output", str(tmp_path / "new.png")]) == 0
    assert np.array_equal(pixels("old.png"), pixels("new.png"))
    assert main(["generate", "--path", str(tiny_dev), "--config-from-conf", str(tmp_path / "new.json"), "--no-exif",
                 "--mlx-cache-limit-gb", "0.5", "--output", str(tmp_path / "again.png")]) == 0
    assert np.array_equal(pixels("again.png"), pixels("new.png"))
    assert not {"parameters", "mflux_studio"} & set(Image.open(tmp_path / "again.png").info)
    assert main([*command, "--image-path", str(tmp_path / "old.png"), "--image-strength", "0.6",
                 "--output", str(tmp_path / "i2i_old.png")]) == 0
    assert main([*command, "--image", str(tmp_path / "old.png"), "0.6", "--vae-tile-size", "256",
                 "--output", str(tmp_path / "i2i_new.png")]) == 0
    assert np.abs(pixels("i2i_old.png") - pixels("i2i_new.png")).max() <= 1  # tiled VAE passes, within a level
    assert (saved_request(tmp_path / "i2i_new.png")["vae_tiling"], saved_request(tmp_path / "i2i_new.png")[
        "vae_tile_size"]) == (True, 256)
    capsys.readouterr()
    assert main([*command, "--image", str(tmp_path / "old.png"), "0.6", "--vae-tile-size", "128", "-v",
                 "--output", str(tmp_path / "small_tiles.png")]) == 0
    assert "encoding the input image in 128 px tiles" in capsys.readouterr().out  # encoding too, at the size asked
    for flags, message in ((["--scheduler", "karras"], "--scheduler karras is not one of the studio's"),
                           (["--vae-tile-size", "100"], "VAE tile size 100 is out of range: use 128 to 4096 px."),
                           (["--lora", str(first), "x"], f"The scale of --lora {first} must be a number"),
                           (["--image", "p.png", "0.5", "1"], "--image takes a path and at most a strength"),
                           (["--mlx-cache-limit-gb", "0"], "--mlx-cache-limit-gb must be a number of GB above 0")):
        assert main([*command, *flags, "--output", str(tmp_path / "refused.png")]) == 1, flags
        assert message in capsys.readouterr().err, flags


def test_a_small_image_strength_keeps_one_step_of_the_image(tiny_dev, tmp_path):
    """0.2 at 4 steps: diffusers' rounding starts from step 0, pure noise, and drops the image; mflux and A1111 keep
    a step of it, which is diffusers' run at strength 0.75 (its first step skipped)."""
    import diffusers
    import torch
    from diffusers.pipelines.flux import pipeline_flux_img2img

    from tests.parity import UINT8_TOLERANCE, deterministic_diffusers, make_noise, max_uint8_diff, run_cli, save

    init = random_image(64, 64, seed=5)
    noise = make_noise(tmp_path, (1, 4, 8, 8), seed=6)
    common = ["--path", tiny_dev, "--prompt", "a hill", "--steps", 4, "--guidance", 4.0, "--init-noise", noise,
              "--width", 64, "--height", 64]
    ours = run_cli("generate", *common, "--image-path", save(init, tmp_path / "init.png"), "--image-strength", 0.2,
                   "--output", tmp_path / "ours.png")
    pipe = diffusers.FluxImg2ImgPipeline.from_pretrained(tiny_dev, torch_dtype=torch.float32, local_files_only=True)
    with deterministic_diffusers(pipeline_flux_img2img, np.load(noise)):
        expected = pipe("a hill", image=init, height=64, width=64, strength=0.75, num_inference_steps=4,
                        guidance_scale=4.0, output_type="pil").images[0]
    assert max_uint8_diff(ours, expected) <= UINT8_TOLERANCE
    assert max_uint8_diff(ours, run_cli("generate", *common, "--output", tmp_path / "text.png")) > UINT8_TOLERANCE


def test_an_output_named_jpg_or_webp_is_one_with_a1111s_text_in_its_exif(tiny_dev, tmp_path):
    from mflux_core.presets import settings_from_png

    for name, kind in (("photo.jpg", "JPEG"), ("photo.webp", "WEBP")):
        assert main(["generate", "--path", str(tiny_dev), *COMMON, "--seed", "9", "--output", str(tmp_path / name)]) \
            == 0
        with Image.open(tmp_path / name) as written:
            assert written.format == kind and written.size == (64, 64)
        assert {key: settings_from_png(tmp_path / name)[key] for key in ("prompt", "seed", "steps")} == {
            "prompt": "a red house", "seed": 9, "steps": 2}


def test_conflicting_or_mistyped_inputs_are_one_sentence(tiny_dev, tmp_path, capsys):
    """mflux refuses --prompt with --prompt-file; inputs one tool cannot use together are refused, not dropped."""
    import pytest

    random_image(64, 64, seed=1).save(tmp_path / "a.png")
    random_image(64, 64, seed=2).save(tmp_path / "b.png")
    with pytest.raises(SystemExit):
        main(["generate", "--prompt", "x", "--prompt-file", str(tmp_path / "p.txt")])
    assert "not allowed with argument" in capsys.readouterr().err
    a, b = str(tmp_path / "a.png"), str(tmp_path / "b.png")
    for command, sentence in (
            (["fill", "--image-path", a, "--masked-image-path", b, "--outpaint-padding", "16"],
             "Fill inpaints inside a mask or outpaints a padded canvas, not both"),
            (["depth", "--image-path", a, "--depth-image-path", b], "Depth takes a control image"),
            (["upscale", "--image-path", a, "--controlnet-image-path", b], "Upscale takes one image")):
        assert main([*command, "--prompt", "x", "--steps", "1", "--output", str(tmp_path / "o.png")]) == 1
        assert sentence in capsys.readouterr().err, command
    assert main(["loras", "--lora-dir", str(tmp_path / "nope")]) == 1
    assert f"--lora-dir {tmp_path / 'nope'} is not a folder." in capsys.readouterr().err
    assert main(["generate", "--path", str(tiny_dev), *COMMON, "--seed", "1", "--negative-prompt", "blurry",
                 "--output", str(tmp_path / "n.png")]) == 0
    assert "Note: --negative-prompt is not used" in capsys.readouterr().err
