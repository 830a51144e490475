"""FLUX.1 VAE decode and encode on the CPU: ours (MLX) vs diffusers' AutoencoderKL (torch), float32.

The full FLUX.1 VAE configuration (channels 128/256/512/512, 2 resnets per block, 16 latent
channels) with random weights: diffusers builds the model, its weights are saved in the real
on-disk layout and loaded through our loader, so both sides compute the same function (the
largest difference is printed). Decode and encode at 512x512 and 1024x1024 alternate ours and
diffusers within each round; each figure is the median over the rounds.

    python -m bench.vae [--sizes 512,1024] [--repeats 3]
"""

import argparse
import tempfile
from pathlib import Path

FLUX_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=16, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
    norm_num_groups=32, down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    act_fn="silu", scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
    mid_block_add_attention=True, sample_size=1024,
)


def build_pair(folder: Path):
    """diffusers' AutoencoderKL with random weights, saved to `folder` and loaded back as ours."""
    import torch
    from diffusers import AutoencoderKL

    from mflux_core.models.vae import load_vae

    torch.manual_seed(0)
    reference = AutoencoderKL(**FLUX_VAE).eval()
    with torch.no_grad():  # GroupNorm weights init to 1 and 0: perturb them so a mapping slip would show
        for name, p in reference.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    reference.save_pretrained(folder)
    return reference, load_vae(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import mflux_core  # noqa: F401  (OpenBLAS before mlx.core)
    import mlx.core as mx
    import numpy as np
    import torch

    from bench.timing import alternate, load_line, machine_line, median, spread, table

    print(machine_line())
    print(f"torch {torch.__version__} with {torch.get_num_threads()} threads")
    rows, ratios = [], []
    with tempfile.TemporaryDirectory() as tmp:
        reference, ours = build_pair(Path(tmp))
        for size in (int(s) for s in args.sizes.split(",")):
            rng = np.random.default_rng(size)
            latents = rng.standard_normal((1, 16, size // 8, size // 8), dtype=np.float32)
            pixels = rng.uniform(-1, 1, (1, size, size, 3)).astype(np.float32)
            mx_latents, mx_pixels = mx.array(latents), mx.array(pixels)
            t_latents = torch.from_numpy(latents) / FLUX_VAE["scaling_factor"] + FLUX_VAE["shift_factor"]
            t_pixels = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()

            def torch_decode():
                with torch.inference_mode():
                    return reference.decode(t_latents).sample

            def torch_encode():
                with torch.inference_mode():
                    return reference.encode(t_pixels).latent_dist.mean

            calls = {
                "ours decode": lambda: mx.eval(ours.decode(mx_latents)),
                "diffusers decode": torch_decode,
                "ours encode": lambda: mx.eval(ours.encode(mx_pixels)),
                "diffusers encode": torch_encode,
            }
            seconds = alternate(calls, repeats=args.repeats)
            decoded = np.array(ours.decode(mx_latents)).transpose(0, 3, 1, 2)
            decode_error = np.abs(decoded - torch_decode().numpy()).max() / np.abs(decoded).max()
            print(f"\n{size}x{size}: decode max |ours - diffusers| / max |diffusers| {decode_error:.1e}; {load_line()}")
            for op in ("decode", "encode"):
                ours_s, peer_s = median(seconds[f"ours {op}"]), median(seconds[f"diffusers {op}"])
                rows.append([size, op, ours_s, peer_s, f"{ours_s / peer_s:.2f}",
                             spread(seconds[f"ours {op}"]), spread(seconds[f"diffusers {op}"])])
                ratios.append(f"{size} {op} ours/diffusers {ours_s / peer_s:.2f}")
    print()
    print(table(["size", "op", "ours s", "diffusers s", "ours/diffusers", "spread ours", "spread diffusers"], rows))
    print(load_line())
    print("ratios: " + ", ".join(ratios))


if __name__ == "__main__":
    main()
