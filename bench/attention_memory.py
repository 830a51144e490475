"""Memory of one FLUX.1 transformer step on the CPU: ours (MLX) vs diffusers' FluxTransformer2DModel.

Full FLUX.1 width (hidden 3072, 24 heads x 128) with one double- and one single-stream block, random
float32 weights, at 1024x1024 (4096 image + 512 text tokens): FLUX.1-dev's config from
bench/gpu_step.py with the block counts cut to 1 + 1. Each side runs in its own process and is
measured over its first step after loading:

  ours       MLX's peak memory during the step above the weights and inputs (mx.get_peak_memory),
             the buffer cache MLX holds after it (kernels.cpu_buffer_cache_bytes caps it), and the
             process's peak RSS growth;
  diffusers  the process's peak RSS growth (torch has no allocator counter on the CPU).

RSS is sampled every 2 ms. Also printed: kernels.attention_peak_bytes for one attention call of
the step. The last line gives the ratios against diffusers (target: ours <= 1.5x).

    python -m bench.attention_memory [--size 1024] [--attention-memory BYTES]
"""

import argparse
import json
import threading
import time

from bench.gpu_step import FLUX_DEV, TEXT_TOKENS, random_inputs

CONFIG = dict(FLUX_DEV, num_layers=1, num_single_layers=1)
RSS_SAMPLE_SECONDS = 0.002
TARGET_RATIO = 1.5


def rss_growth(step) -> int:
    """Peak RSS of this process while `step()` runs, over its RSS just before."""
    import psutil

    process = psutil.Process()
    before = peak = process.memory_info().rss
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(RSS_SAMPLE_SECONDS)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        step()
    finally:
        done.set()
        sampler.join()
    return max(peak, process.memory_info().rss) - before


def worker_ours(size: int, attention_memory: int | None) -> dict:
    import mflux_core  # noqa: F401  (OpenBLAS before mlx.core)
    import mlx.core as mx

    from mflux_core.models import kernels
    from mflux_core.models.transformer import FluxTransformer, FluxTransformerConfig

    if attention_memory:
        kernels.set_attention_memory(attention_memory)
    mx.random.seed(0)
    model = FluxTransformer(FluxTransformerConfig.from_dict(CONFIG))
    arrays = random_inputs(size)
    inputs = {k: mx.array(v) for k, v in arrays.items()}
    rope = model.rope_tables(arrays["img_ids"], arrays["txt_ids"])
    mx.eval(model.parameters(), inputs, rope)
    resident = mx.get_active_memory()
    mx.reset_peak_memory()

    def step():
        mx.eval(model(inputs["hidden_states"], inputs["encoder_hidden_states"], inputs["pooled_projections"],
                      inputs["timestep"], None, None, guidance=inputs["guidance"], rope=rope))

    rss = rss_growth(step)
    tokens = len(arrays["img_ids"]) + TEXT_TOKENS
    heads, head_dim = CONFIG["num_attention_heads"], CONFIG["attention_head_dim"]
    return {
        "resident_bytes": resident, "peak_bytes": mx.get_peak_memory() - resident, "rss_growth": rss,
        "cache_bytes": mx.get_cache_memory(), "cache_limit": kernels.cpu_buffer_cache_bytes(),
        "attention_memory": kernels.attention_memory(),
        "attention_estimate": kernels.attention_peak_bytes(1, heads, tokens, tokens, head_dim, 4, gpu=False),
    }


def worker_diffusers(size: int) -> dict:
    import torch
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    model = FluxTransformer2DModel(**CONFIG).eval().requires_grad_(False)
    inputs = {k: torch.from_numpy(v) for k, v in random_inputs(size).items()}

    def step():
        with torch.inference_mode():
            model(**inputs, return_dict=False)

    return {"rss_growth": rss_growth(step)}


def gib(n: int) -> str:
    return f"{n / 2**30:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--attention-memory", type=int, help="kernels.set_attention_memory(BYTES) for ours")
    parser.add_argument("--worker", choices=("ours", "diffusers"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker_ours(args.size, args.attention_memory) if args.worker == "ours" else worker_diffusers(args.size)
        print("RESULT " + json.dumps(result), flush=True)
        return

    from bench.timing import load_line, machine_line, run_worker, table

    print(machine_line())
    extra = ["--attention-memory", str(args.attention_memory)] if args.attention_memory else []
    ours = run_worker("bench.attention_memory", "--worker", "ours", "--size", str(args.size), *extra)
    diffusers = run_worker("bench.attention_memory", "--worker", "diffusers", "--size", str(args.size))
    for name, result in (("ours", ours), ("diffusers", diffusers)):
        if "error" in result:
            raise SystemExit(f"{name} failed:\n{result['error']}")
    print(f"{args.size}x{args.size}, 1 double + 1 single block, float32; ours: weights and inputs "
          f"{gib(ours['resident_bytes'])} GiB, attention limit {ours['attention_memory'] >> 20} MiB, "
          f"buffer cache limit {ours['cache_limit'] >> 20} MiB, attention_peak_bytes per call "
          f"{ours['attention_estimate'] >> 20} MiB; {load_line()}")
    print(table(["contender", "peak above weights GiB", "cache held after GiB", "RSS growth GiB"], [
        ["ours (MLX)", gib(ours["peak_bytes"]), gib(ours["cache_bytes"]), gib(ours["rss_growth"])],
        ["diffusers (torch)", "n/a", "n/a", gib(diffusers["rss_growth"])],
    ]))
    print(f"ratios: ours peak / diffusers RSS growth {ours['peak_bytes'] / diffusers['rss_growth']:.2f} "
          f"(target <= {TARGET_RATIO}), ours RSS growth / diffusers RSS growth "
          f"{ours['rss_growth'] / diffusers['rss_growth']:.2f}")


if __name__ == "__main__":
    main()
