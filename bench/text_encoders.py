"""FLUX.1's text encoders on the CPU: ours (MLX) vs transformers (torch), float32.

- T5-XXL at its real widths (d_model 4096, 64 heads x 64, d_ff 10240) with ONE block, 512 tokens
  (embedding + block + final norm; a full encode is ~24 blocks, extrapolated in the table);
- CLIP-L text model, whole (12 layers, width 768), 77 tokens.

transformers builds each model with random weights; they are saved in the real layout and loaded
through our loaders, so both sides compute the same function (largest difference printed). Ours
and transformers alternate within each round; each figure is the median over the rounds.

    python -m bench.text_encoders [--repeats 5]
"""

import argparse
import tempfile
from pathlib import Path

T5_XXL = dict(
    vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=1, num_heads=64, relative_attention_num_buckets=32,
    relative_attention_max_distance=128, feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6,
    tie_word_embeddings=False,
)
T5_XXL_BLOCKS = 24
CLIP_L = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, eos_token_id=2, bos_token_id=0,
    pad_token_id=1,
)


def build_t5(folder: Path):
    import torch
    from transformers import T5Config, T5EncoderModel

    from mflux_core.models.t5 import load_t5_encoder

    torch.manual_seed(0)
    reference = T5EncoderModel(T5Config(**T5_XXL)).eval()
    reference.save_pretrained(folder)
    return reference, load_t5_encoder(folder)


def build_clip(folder: Path):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from mflux_core.models.clip import load_clip_text_model

    torch.manual_seed(0)
    reference = CLIPTextModel(CLIPTextConfig(**CLIP_L)).eval()
    reference.save_pretrained(folder)
    return reference, load_clip_text_model(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import mflux_core  # noqa: F401  (OpenBLAS before mlx.core)
    import mlx.core as mx
    import numpy as np
    import torch

    from bench.timing import alternate, load_line, machine_line, median, spread, table

    print(machine_line())
    print(f"torch {torch.__version__} with {torch.get_num_threads()} threads")
    rng = np.random.default_rng(0)
    rows, ratios = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, build, length, vocab in (("T5-XXL 1 block", build_t5, 512, T5_XXL["vocab_size"]),
                                           ("CLIP-L", build_clip, 77, CLIP_L["vocab_size"])):
            reference, ours = build(Path(tmp) / name.split()[0])
            ids = rng.integers(3, vocab, (1, length))
            ids[0, -1] = CLIP_L["eos_token_id"] if name == "CLIP-L" else 1
            mx_ids, t_ids = mx.array(ids.astype(np.int32)), torch.from_numpy(ids)

            def run_ours():
                out = ours(mx_ids)
                mx.eval(out)
                return out[0] if isinstance(out, tuple) else out

            def run_reference():
                with torch.inference_mode():
                    return reference(input_ids=t_ids).last_hidden_state

            seconds = alternate({"ours": run_ours, "transformers": run_reference}, repeats=args.repeats)
            expected = run_reference().numpy()
            error = np.abs(np.array(run_ours()) - expected).max() / np.abs(expected).max()
            ours_s, peer_s = median(seconds["ours"]), median(seconds["transformers"])
            full = f"{T5_XXL_BLOCKS * ours_s:.2f} / {T5_XXL_BLOCKS * peer_s:.2f}" if name.startswith("T5") else ""
            rows.append([name, length, ours_s, peer_s, f"{ours_s / peer_s:.2f}", full, f"{error:.1e}",
                         spread(seconds["ours"]), spread(seconds["transformers"])])
            ratios.append(f"{name} ours/transformers {ours_s / peer_s:.2f}")
            del reference, ours
    print()
    print(table(["model", "tokens", "ours s", "transformers s", "ratio", "24 blocks (ours / tf) s", "max rel diff",
                 "spread ours", "spread tf"], rows))
    print(load_line())
    print("ratios: " + ", ".join(ratios))


if __name__ == "__main__":
    main()
