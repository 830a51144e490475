"""The memory budget: every request is planned before its large allocations, and runs within the
budget or is refused with one sentence.

Planning is the only safe way: MLX's CPU backend ignores `mx.set_memory_limit` and the process
dies (a signal, not an exception) on an allocation the system cannot satisfy, and on Metal an
oversized request first pushes the whole machine into swap. So each phase of a request (one
denoise step, a VAE decode or encode) is estimated from the model's config before it starts;
VAE passes are tiled when they would not fit whole, attention is computed in chunks sized from
the budget, and what still does not fit is refused.
"""

import logging
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass

import mlx.core as mx
import psutil

from mflux_core.errors import InvalidRequest
from mflux_core.models import kernels
from mflux_core.models.siglip import SiglipVisionConfig
from mflux_core.models.transformer import MLP_RATIO, FluxTransformerConfig
from mflux_core.models.vae import VAEConfig
from mflux_core.models.vae_memory import choose_vae_tiling
from mflux_core.process_memory import keep_large_buffers_mapped, return_free_memory, reuse_large_buffers

log = logging.getLogger("mflux_studio.memory")

GB = 10**9
CPU_MARGIN_FRACTION = 0.15  # of the machine's memory left to the OS and other programs...
CPU_MARGIN_MIN = 2 * GB  # ...but never less than this
CUDA_MARGIN_FRACTION = 0.05  # the CUDA context and the allocator's fragmentation
SMALLEST_BUDGET = GB // 4
MIB = 1 << 20
ESTIMATE_MARGIN = 1.25  # the phase estimates are within 25% of the measured peaks (tests): plan for the high side
# What the process's own memory (the C heap, Python) grows by beside MLX's count during a phase, as a fraction of
# the phase: measured with process_memory's fixed mmap threshold, 6 MB during the demo's 0.38 GB decode at
# 2048x1024 (peak RSS 0.61 GB; 58 MB and 0.66 GB without it)
PROCESS_GROWTH = 0.05
# ...and what it may grow by with large buffers served from the heap instead (58 MB in that decode, 15%): a run
# whose plan leaves this much of the budget free uses the heap, which is faster (process_memory.py)
HEAP_GROWTH = 0.25
UPSCALER_PHASE = "upscaling with an upscaler model"  # mflux_core/upscaler_models.py
DEPTH_PHASE = "estimating the depth map"  # the plan's phase of the depth estimator (models/depth_memory.py)
HINT_PHASE = "reading the control image"  # an XLabs ControlNet's hint block (models/controlnet.py)
# What a GPU may hold beside a run's planned peak in work queued but not yet finished. MLX keeps each queued
# kernel's inputs alive until its command buffer completes, up to 10 buffers of up to 1 GB each on Hopper
# (MLX_MAX_MB_PER_BUFFER), so a FLUX.1-dev step at 1024 px on an H200 held 15 GiB above its weights where
# diffusers holds 0.5; held to its plan (MemoryBudget.holding) it held 3.5 / 3.6 / 3.8 / 5.2 / 7.1 GiB with
# 0 / 0.25 / 0.5 / 2 / 4 GB of queued work allowed, all at the same speed (bench/gpu_step.py).
IN_FLIGHT_BYTES = GB // 2
# MLX's buffer cache on a GPU: a FLUX.1-dev step ran as fast with 0 or 1 GB as with the 8 GB the CPU's rule gives
# there (bench/gpu_step.py), and on a Mac what the cache keeps is memory the rest of the machine goes without
GPU_BUFFER_CACHE_BYTES = GB
# Bytes of one denoise step's activations per token and hidden unit, in units of the compute dtype's
# size, beside attention's own scratch (kernels.attention_peak_bytes): a single-stream block keeps
# x, its norm, q/k/v and the attention output (6 widths) and, around the MLP, its hidden state,
# GELU's float32 argument and output and the attention-and-MLP concatenation (about 4 x 4 widths)
# alive at once. Fitted to mx.get_peak_memory within 15% from 288 to 16,416 tokens, at widths 96 and 3072 (tests: up to 9,248).
STEP_ACTIVATION_WIDTHS = 6 + 4 * MLP_RATIO


def machine_memory_bytes() -> int:
    """The memory of the device MLX computes on: unified memory on a Mac, the GPU's on CUDA, RAM on CPU."""
    size = mx.device_info().get("memory_size")
    return int(size) if size else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_budget_bytes() -> int:
    """What the machine can give one studio: macOS's recommended GPU working set on Metal, the device
    memory less a margin on CUDA, the RAM less a margin for everything else on the CPU."""
    info = mx.device_info()
    if info.get("max_recommended_working_set_size"):
        return int(info["max_recommended_working_set_size"])
    total = machine_memory_bytes()
    if mx.default_device().type == mx.DeviceType.gpu:
        return int(total * (1 - CUDA_MARGIN_FRACTION))
    return total - max(CPU_MARGIN_MIN, int(total * CPU_MARGIN_FRACTION))


def budget_from_gb(text: str | float) -> int:
    """`--memory-budget GB` -> bytes; refuses what no model could run in."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise InvalidRequest(f"The memory budget must be a number of GB, not {text!r}.") from None
    if not value * GB >= SMALLEST_BUDGET or value == float("inf"):
        raise InvalidRequest(f"The memory budget must be at least {SMALLEST_BUDGET / GB:g} GB, not {text}.")
    return int(value * GB)


def gb_text(count: int, decimals: int = 1) -> str:
    return f"{count / GB:,.{decimals}f} GB" if count >= GB // 10 else f"{count / 10**6:,.0f} MB"


def apart_texts(larger: int, smaller: int) -> tuple[str, str]:
    """Two amounts with as many decimals as it takes to show the first is the larger (1.04 GB, not 1.0 GB, against
    a budget of 1.0 GB)."""
    decimals = 1
    while decimals < 3 and gb_text(larger, decimals) == gb_text(smaller, decimals):
        decimals += 1
    return gb_text(larger, decimals), gb_text(smaller, decimals)


def transformer_step_bytes(config: FluxTransformerConfig, image_tokens: int, text_tokens: int, itemsize: int,
                           batch: int = 1) -> int:
    """Peak bytes above the weights of one transformer call over [text; image] tokens: the activations
    of the largest block plus attention's scratch. Independent of depth: the blocks run one after another."""
    tokens = image_tokens + text_tokens
    activations = STEP_ACTIVATION_WIDTHS * batch * tokens * config.hidden_size * itemsize
    scratch = kernels.attention_peak_bytes(batch, config.num_attention_heads, tokens, tokens,
                                           config.attention_head_dim, itemsize)
    return activations + scratch


# One LoRA training step, each block recomputed in the backward pass (training/lora_training.py): score-sized
# buffers per head of the block being differentiated (MLX's attention gradient), hidden widths per token kept for
# every block, and a fixed part. Fitted to mx.get_peak_memory within 22% on the demo model (4 blocks, 3 heads of 32)
# from 768 to 4,608 tokens and on a 12-block model (4 heads of 32) at 288 and 1,056 (tests: 25%).
TRAINING_SCORE_COPIES = 4
TRAINING_WIDTHS_PER_BLOCK = 12
TRAINING_FIXED_BYTES = 20 * MIB


def training_step_bytes(config: FluxTransformerConfig, image_tokens: int, text_tokens: int, itemsize: int,
                        batch: int) -> int:
    """Peak bytes above the weights of one LoRA training step over a batch of [text; image] token sequences."""
    tokens = image_tokens + text_tokens
    blocks = config.num_layers + config.num_single_layers
    scores = TRAINING_SCORE_COPIES * config.num_attention_heads * tokens ** 2
    widths = TRAINING_WIDTHS_PER_BLOCK * blocks * tokens * config.hidden_size
    return batch * (scores + widths) * itemsize + TRAINING_FIXED_BYTES


def controlnet_step_bytes(transformer: FluxTransformerConfig, controlnets: tuple[FluxTransformerConfig, ...],
                          image_tokens: int, text_tokens: int, itemsize: int) -> int:
    """Peak bytes above the weights of one step with ControlNets: each one's pass is evaluated before the next and
    before the transformer's (tools/controlnet_conditioning.py), so the largest pass, plus the residuals they hand
    over (one image-wide sample per ControlNet block), alive through the passes, and with several ControlNets their
    sums (one per distinct run of main blocks they cover)."""
    per_token = image_tokens * transformer.hidden_size * itemsize
    samples = sum(config.num_layers + config.num_single_layers for config in controlnets) * per_token
    if len(controlnets) > 1:
        samples += per_token * (
            summed_sample_count(transformer.num_layers, [config.num_layers for config in controlnets])
            + summed_sample_count(transformer.num_single_layers, [config.num_single_layers for config in controlnets]))
    passes = (transformer_step_bytes(config, image_tokens, text_tokens, itemsize)
              for config in (transformer, *controlnets))
    return max(passes) + samples


def summed_sample_count(main_blocks: int, sample_counts: list[int]) -> int:
    """The distinct sums of several ControlNets' samples over `main_blocks` blocks: each ControlNet's sample i covers
    ceil(blocks / samples) blocks (models/transformer.py's ControlNetResiduals); blocks whose samples are the same
    share one sum."""
    intervals = [math.ceil(main_blocks / count) for count in sample_counts if count]
    return len({tuple(block // interval for interval in intervals) for block in range(main_blocks)}) if intervals else 0


def redux_encode_bytes(vision: SiglipVisionConfig, text_width: int, itemsize: int) -> int:
    """Peak bytes above the weights of encoding one Redux image: the larger of the SigLIP tower's (the float32
    input and its unfolded patches, one layer's attention scores, 8 hidden and 3 MLP widths per token) and the
    embedder's (its 3x text-width hidden state and its output), evaluated one after the other (models/redux.py).
    Fitted to mx.get_peak_memory within 12% at 256 and 729 tokens, widths 64-256."""
    tokens = vision.num_patches
    pixels = 2 * vision.image_size ** 2 * vision.num_channels * 4
    tower = (pixels + vision.num_attention_heads * tokens ** 2 * itemsize
             + tokens * (8 * vision.hidden_size + 3 * vision.intermediate_size) * itemsize)
    return max(tower, tokens * 4 * text_width * itemsize)


def attention_memory_for(budget_bytes: int) -> int:
    """The bytes of attention scores alive at once. CPU: a 64th of the budget within 64-512 MiB (256 MiB
    kept a 1024 px step at 1.36x diffusers' memory at the old speed, 512 MiB ran 18% faster at 1.8x:
    bench/attention_memory.py). GPU: the fused kernel keeps no scores, so chunks only bound its fallback
    path, and each chunk costs a synchronisation: a 16th of the budget within 256 MiB-4 GiB."""
    if mx.default_device().type == mx.DeviceType.gpu:
        return min(max(budget_bytes // 16, 256 * MIB), 4096 * MIB)
    return min(max(budget_bytes // 64, 64 * MIB), 512 * MIB)


@dataclass(frozen=True)
class MemoryPlan:
    """What one request needs: weights resident during it, and the peak of each phase above them."""

    what: str  # e.g. "a 2048x2048 image"
    weights_bytes: int
    phases: tuple[tuple[str, int], ...]  # (phase, bytes above the weights), e.g. ("denoising", 3.1e9)
    reserved_bytes: int  # MLX's buffer cache and the rest of the process (Python, libraries, images, other arrays)
    remedies: str = "choose a smaller size, quantize the model to 8 or 4 bits, or close other tools"  # of a refusal

    @property
    def largest_phase(self) -> tuple[str, int]:
        return max(self.phases, key=lambda phase: phase[1], default=("nothing", 0))

    @property
    def process_bytes(self) -> int:
        """The process beside MLX's weights and activations: the cache and the rest, plus what grows during the phase."""
        return self.reserved_bytes + int(PROCESS_GROWTH * self.largest_phase[1])

    @property
    def peak_bytes(self) -> int:
        return self.weights_bytes + self.largest_phase[1] + self.process_bytes

    @property
    def needed_bytes(self) -> int:
        """The peak with the largest phase's estimate raised by its error margin: what must fit the budget."""
        return self.weights_bytes + int(ESTIMATE_MARGIN * self.largest_phase[1]) + self.process_bytes

    def fits(self, budget_bytes: int) -> bool:
        return self.needed_bytes <= budget_bytes

    def fits_with_heap_growth(self, budget_bytes: int) -> bool:
        """Whether the budget also holds what the C heap may keep when it serves the large buffers."""
        return self.needed_bytes + int(HEAP_GROWTH * self.largest_phase[1]) <= budget_bytes

    def summary(self) -> str:
        phases = ", ".join(f"{name} {gb_text(size)}" for name, size in self.phases)
        return (f"{self.what}: planned peak {gb_text(self.peak_bytes)} (weights {gb_text(self.weights_bytes)}, "
                f"{phases}, cache and the rest of the process {gb_text(self.process_bytes)})")

    def against_measured(self, measured_bytes: int) -> dict:
        """The plan's MLX part (weights and the largest phase) next to MLX's measured peak, logged."""
        planned = self.peak_bytes - self.process_bytes
        log.info("memory: planned %s, measured peak %s", gb_text(planned), gb_text(measured_bytes))
        return {"plan": self.summary(), "planned_bytes": planned, "measured_bytes": measured_bytes}

    def refusal(self, budget_bytes: int) -> str:
        phase, size = self.largest_phase
        needed, budget = apart_texts(self.needed_bytes, budget_bytes)
        return (f"{self.what[0].upper()}{self.what[1:]} needs about {needed} of memory "
                f"(weights {gb_text(self.weights_bytes)}, {gb_text(int(ESTIMATE_MARGIN * size))} while {phase}, "
                f"{gb_text(self.process_bytes)} for the rest of the process), more than the memory budget of "
                f"{budget}: {self.remedies}.")


class MemoryBudget:
    """The process's budget: applied to MLX's limits, and what every plan is checked against."""

    def __init__(self, budget_bytes: int | None = None):
        self.bytes = budget_bytes or default_budget_bytes()
        self.other_bytes: int | None = None  # a fixed figure for the process beside the weights, instead of measuring (tests)
        kernels.set_attention_memory(attention_memory_for(self.bytes))
        keep_large_buffers_mapped()
        mx.set_memory_limit(self.bytes)
        self.cache_bytes = (min(GPU_BUFFER_CACHE_BYTES, self.bytes // 8) if mx.default_device().type == mx.DeviceType.gpu
                            else kernels.cpu_buffer_cache_bytes())
        mx.set_cache_limit(self.cache_bytes)

    def limit_cache(self, limit_bytes: int) -> None:
        """Keep MLX's cache of freed buffers within `limit_bytes` too (mflux's --mlx-cache-limit-gb)."""
        self.cache_bytes = min(self.cache_bytes, limit_bytes)
        mx.set_cache_limit(self.cache_bytes)

    def reserved_bytes(self, resident_bytes: int) -> int:
        """What the process holds beside the `resident_bytes` of model weights and a request's activations:
        the buffer cache MLX may keep, and everything else now (Python, libraries, the server, images, other
        MLX arrays), measured unless fixed."""
        others = self.other_bytes
        if others is None:
            return_free_memory()
            others = psutil.Process().memory_info().rss - mx.get_cache_memory() - resident_bytes
        return self.cache_bytes + max(0, others)

    @contextmanager
    def holding(self, plan: MemoryPlan, in_flight_bytes: int = IN_FLIGHT_BYTES):
        """Within: MLX's memory limit is what the run was planned to need beside what it holds now (the
        largest phase with its error margin, and `in_flight_bytes` of queued work), never above the
        budget. MLX's limit is a guideline, not a wall: above it, evaluation waits for queued work
        to finish before queuing more, so a run's peak stays near its plan instead of growing with
        how far the host runs ahead of the GPU."""
        planned = mx.get_active_memory() + int(ESTIMATE_MARGIN * plan.largest_phase[1]) + in_flight_bytes
        mx.set_memory_limit(min(self.bytes, planned))
        try:
            yield plan
        finally:
            mx.set_memory_limit(self.bytes)

    @staticmethod
    def usage() -> dict[str, int]:
        """MLX's memory now: in arrays ("active"), the most since the last reset ("peak"), and freed but kept for
        reuse ("cache")."""
        return {"active": mx.get_active_memory(), "peak": mx.get_peak_memory(), "cache": mx.get_cache_memory()}

    def allowance(self, weights_bytes: int, resident_bytes: int) -> int:
        """Bytes one phase may use beside `weights_bytes` of weights, `resident_bytes` of which are loaded now."""
        return self.bytes - weights_bytes - self.reserved_bytes(resident_bytes)

    def check(self, plan: MemoryPlan) -> MemoryPlan:
        """The plan, logged; an InvalidRequest with the plan's sentence when it does not fit."""
        log.info("%s; budget %s", plan.summary(), gb_text(self.bytes))
        if not plan.fits(self.bytes):
            raise InvalidRequest(plan.refusal(self.bytes))
        if plan.fits_with_heap_growth(self.bytes):
            # the heap keeps what MLX may free at once (its largest phase and its buffer cache, which the decode
            # empties first) for the next buffers, within the plan's slack: with the phase alone a 512 px decode
            # kept faulting its pages back in (bench/RESULTS.md, 2026-12-05)
            reuse_large_buffers(min(self.bytes - plan.needed_bytes, plan.largest_phase[1] + self.cache_bytes))
        else:
            keep_large_buffers_mapped()
        return plan


def vae_tile(config: VAEConfig, height: int, width: int, itemsize: int, direction: str, allowance: int | None,
             forced: int = 0) -> int | None:
    """The tile size for a VAE pass (None: whole): tiles only when the whole pass would not fit
    `allowance` bytes, or when a `forced` tile side is asked for (smaller tiles where the budget needs them)."""
    tile = None if allowance is None else choose_vae_tiling(config, height, width, itemsize, direction,
                                                            int(allowance / (ESTIMATE_MARGIN + PROCESS_GROWTH)))
    if not forced:
        return tile
    return forced if tile is None else min(tile, forced)
