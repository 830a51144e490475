"""One denoising step of the full FLUX.1-dev transformer on one GPU: MLX (CUDA) vs diffusers.

Random bfloat16 weights at FLUX.1-dev's real shapes (19 double + 38 single blocks, hidden 3072),
1024x1024 (4096 image + 512 text tokens). Each contender runs in its own subprocess so its peak
memory is its own:

  mlx            our FluxTransformer on MLX's CUDA backend, eager, as the studio runs a step: under
                 the default memory budget, held to the step's plan (MemoryBudget.holding)
  mlx-compiled   the same, the whole transformer call under mx.compile
  torch          diffusers' FluxTransformer2DModel, eager
  torch-compile  the same under torch.compile (default mode; its first call includes the compile)

A contender may carry settings after a colon, joined by '+': `in_flight=GB` (the queued work held
beside the plan; `none`: not held, as before the budget held runs), `cache=GB` (MLX's buffer cache
limit), `sync=1` (each block evaluated before the next is queued) and environment variables for that process only, e.g. `mlx:in_flight=none` or
`mlx:cache=1+MLX_MAX_MB_PER_BUFFER=200`.

Prints seconds per step (median), the first call's seconds (MLX: whether its compiled-kernel cache
was empty), peak memory during a step (weights included), the planner's estimate of the step's peak
above the weights (memory.transformer_step_bytes) and the FLOP floor (the step's FLOPs over this
GPU's measured bfloat16 GEMM rate), then a line of ratios.

    python -m bench.gpu_step [--size 1024] [--steps 5] [--only mlx,torch] [--json FILE]
"""

import argparse
import json
import os
import time

FLUX_DEV = dict(
    in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=[16, 56, 56],
)
TEXT_TOKENS = 512
CONTENDERS = ("mlx", "torch", "mlx-compiled", "torch-compile")


def step_flops(image_tokens: int, text_tokens: int = TEXT_TOKENS, config: dict = FLUX_DEV) -> float:
    """Matmul FLOPs of one transformer call (blocks' token-wise linears and attention; embedders ignored)."""
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    tokens = image_tokens + text_tokens
    per_token_block = 2 * (4 * dim * dim + 2 * dim * 4 * dim)  # q, k, v, out + the MLP, either block type
    attention = 4 * tokens * tokens * dim
    blocks = config["num_layers"] + config["num_single_layers"]
    return blocks * (tokens * per_token_block + attention)


def image_ids(size: int):
    import numpy as np

    grid = size // 16
    ids = np.zeros((grid, grid, 3), np.float32)
    ids[..., 1] = np.arange(grid)[:, None]
    ids[..., 2] = np.arange(grid)[None, :]
    return ids.reshape(-1, 3)


def random_inputs(size: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    ids = image_ids(size)
    return {
        "hidden_states": rng.standard_normal((1, len(ids), FLUX_DEV["in_channels"]), dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((1, TEXT_TOKENS, FLUX_DEV["joint_attention_dim"]), dtype=np.float32),
        "pooled_projections": rng.standard_normal((1, FLUX_DEV["pooled_projection_dim"]), dtype=np.float32),
        "timestep": np.array([0.8], np.float32),
        "guidance": np.array([3.5], np.float32),
        "img_ids": ids,
        "txt_ids": np.zeros((TEXT_TOKENS, 3), np.float32),
    }


def timed_steps(step, steps: int) -> tuple[float, list[float]]:
    """The first call's seconds (kernels compiled, caches filled), then `steps` timed calls after one more."""
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return first, times


def worker_torch(size: int, steps: int, compiled: bool) -> dict:
    import torch
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = FluxTransformer2DModel(**FLUX_DEV).eval().requires_grad_(False)
    torch.set_default_dtype(torch.float32)
    inputs = {k: torch.from_numpy(v).cuda() for k, v in random_inputs(size).items()}
    for k in ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep"):
        inputs[k] = inputs[k].to(torch.bfloat16)
    torch.cuda.synchronize()
    weights = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    forward = torch.compile(model) if compiled else model

    def step():
        with torch.inference_mode():
            out = forward(**inputs, return_dict=False)[0]
        torch.cuda.synchronize()
        return out

    first, times = timed_steps(step, steps)
    return {
        "seconds": times, "first_call": first, "weights_bytes": weights,
        "peak_bytes": torch.cuda.max_memory_allocated(), "reserved_bytes": torch.cuda.max_memory_reserved(),
        "gemm_tflops": torch_gemm_tflops(),
    }


def torch_gemm_tflops() -> float:
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(20):
        a @ b
    torch.cuda.synchronize()
    return 20 * 2 * 8192**3 / (time.perf_counter() - start) / 1e12


def worker_mlx(size: int, steps: int, compiled: bool, options: dict) -> dict:
    import mflux_core  # noqa: F401  (before mlx.core)
    import mlx.core as mx

    from mflux_core.gpu_kernel_cache import CACHE_VARIABLE
    from mflux_core.memory import GB, MemoryBudget, MemoryPlan, transformer_step_bytes
    from mflux_core.models.transformer import FluxTransformer, FluxTransformerConfig

    kernels = os.environ[CACHE_VARIABLE]  # where MLX keeps the CUDA kernels it compiled (gpu_kernel_cache.py)
    cache_was_empty = not any(os.scandir(kernels)) if os.path.isdir(kernels) else True
    if options.get("sync"):
        evaluate_each_block()
    budget = MemoryBudget()
    if "cache" in options:
        mx.set_cache_limit(int(float(options["cache"]) * GB))
    mx.random.seed(0)
    config = FluxTransformerConfig.from_dict(FLUX_DEV)
    model = FluxTransformer(config)
    for part in model.children().values():  # cast and materialise piece by piece: no float32 copy of it all
        for module in part if isinstance(part, list) else [part]:
            module.set_dtype(mx.bfloat16)
            mx.eval(module.parameters())
    arrays = random_inputs(size)
    inputs = {k: mx.array(v) for k, v in arrays.items()}
    for k in ("hidden_states", "encoder_hidden_states", "pooled_projections"):
        inputs[k] = inputs[k].astype(mx.bfloat16)
    rope = model.rope_tables(arrays["img_ids"], arrays["txt_ids"])
    mx.eval(rope)
    mx.synchronize()
    weights = mx.get_active_memory()
    planned = transformer_step_bytes(config, len(arrays["img_ids"]), TEXT_TOKENS, 2)
    plan = MemoryPlan(f"a {size}x{size} step", weights, (("denoising", planned),), 0)
    mx.reset_peak_memory()

    def call(hidden, text, pooled, timestep, guidance, cos, sin):
        return model(hidden, text, pooled, timestep, None, None, guidance=guidance, rope=(cos, sin))

    forward = mx.compile(call) if compiled else call
    args = [inputs[k] for k in ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep", "guidance")]

    def step():
        out = forward(*args, *rope)
        mx.eval(out)
        mx.synchronize()
        return out

    in_flight = options.get("in_flight")
    if in_flight == "none":
        first, times = timed_steps(step, steps)
    else:
        with budget.holding(plan, **({} if in_flight is None else {"in_flight_bytes": int(float(in_flight) * GB)})):
            first, times = timed_steps(step, steps)
    return {
        "seconds": times, "first_call": first, "weights_bytes": weights, "peak_bytes": mx.get_peak_memory(),
        "reserved_bytes": mx.get_peak_memory() + mx.get_cache_memory(), "device": str(mx.default_device()),
        "planned_step_bytes": planned, "kernel_cache_was_empty": cache_was_empty,
    }


def evaluate_each_block() -> None:
    """Every block's outputs evaluated before the next block is queued: nothing queued beyond one block, so the
    step's peak is what its activations need (what memory.transformer_step_bytes estimates)."""
    import mlx.core as mx

    from mflux_core.models.transformer import DoubleStreamBlock, SingleStreamBlock

    for block in (DoubleStreamBlock, SingleStreamBlock):
        def evaluated(self, *args, _call=block.__call__, **kwargs):
            out = _call(self, *args, **kwargs)
            mx.eval(out)
            return out

        block.__call__ = evaluated


def contender_settings(spec: str) -> tuple[str, dict, dict]:
    """'mlx:in_flight=1,MLX_MAX_MB_PER_BUFFER=200' -> ('mlx', {'in_flight': '1'}, {'MLX_MAX_MB_PER_BUFFER': '200'}):
    lower-case settings are the worker's, upper-case ones its environment's."""
    kind, _, settings = spec.partition(":")
    pairs = dict(item.split("=", 1) for item in settings.split("+") if item)
    return kind, {k: v for k, v in pairs.items() if k.islower()}, {k: v for k, v in pairs.items() if k.isupper()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--only", default=",".join(CONTENDERS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the raw results to this file")
    args = parser.parse_args()

    if args.worker:
        kind, options, _ = contender_settings(args.worker)
        compiled = kind.endswith(("-compile", "-compiled"))
        result = (worker_torch(args.size, args.steps, compiled) if kind.startswith("torch")
                  else worker_mlx(args.size, args.steps, compiled, options))
        print("RESULT " + json.dumps(result), flush=True)
        return

    import statistics

    from bench.timing import run_worker, table

    results = {}
    for name in args.only.split(","):
        start = time.perf_counter()
        environment = {**os.environ, **contender_settings(name)[2]}
        results[name] = run_worker("bench.gpu_step", "--worker", name, "--size", str(args.size),
                                   "--steps", str(args.steps), env=environment)
        results[name]["wall"] = time.perf_counter() - start
        r = results[name]
        if "error" in r:
            print(f"{name} failed:\n{r['error']}", flush=True)
        else:
            print(f"{name}: {statistics.median(r['seconds']):.3f} s/step, peak {r['peak_bytes'] / 2**30:.1f} GiB, "
                  f"first call {r['first_call']:.1f} s, wall {r['wall']:.0f} s", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)

    tokens = (args.size // 16) ** 2
    flops = step_flops(tokens)
    gemm = next((r["gemm_tflops"] for r in results.values() if "gemm_tflops" in r), None)
    floor = flops / (gemm * 1e12) if gemm else None
    rows = []
    for name, r in results.items():
        if "error" in r:
            rows.append([name, "failed", "", "", "", "", ""])
            continue
        sec = statistics.median(r["seconds"])
        first = f"{r['first_call']:.1f}" + (" (cold)" if r.get("kernel_cache_was_empty") else "")
        planned = f"{r['planned_step_bytes'] / 2**30:.2f}" if "planned_step_bytes" in r else ""
        rows.append([
            name, sec, first, f"{r['peak_bytes'] / 2**30:.1f}", f"{(r['peak_bytes'] - r['weights_bytes']) / 2**30:.2f}",
            planned, f"{100 * floor / sec:.0f}%" if floor else "?",
        ])
    gpu = os.environ.get("GPU_NAME", "")
    print(f"\nFLUX.1-dev transformer, one step at {args.size}x{args.size} ({tokens} image + {TEXT_TOKENS} text tokens), "
          f"bfloat16, random weights {gpu}")
    print(f"step FLOPs {flops / 1e12:.1f} T; bf16 GEMM {gemm or 0:.0f} TFLOP/s measured; floor {floor or 0:.3f} s")
    print(table(["contender", "s/step", "1st call s", "peak GiB", "peak-weights GiB", "planned GiB", "of floor"], rows))
    ok = {n: statistics.median(r["seconds"]) for n, r in results.items() if "error" not in r}
    ours = [n for n in ok if n.startswith("mlx")]
    ratios = [f"{m}/{t} {ok[m] / ok[t]:.2f}" for m in ours for t in ("torch", "torch-compile") if t in ok]
    mem = [f"peak {m}/torch {results[m]['peak_bytes'] / results['torch']['peak_bytes']:.2f}"
           for m in ours if "torch" in ok]
    print("ratios: " + ", ".join(ratios + mem))


if __name__ == "__main__":
    main()
