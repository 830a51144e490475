"""The flow-matching sigma schedules of FLUX.1, computed as diffusers' FlowMatchEulerDiscreteScheduler does
when FluxPipeline sets its timesteps.

Sigmas start from `linspace(1, 1/N, N)`; dev-style models shift them by `mu`, interpolated from the
image token count between (base_image_seq_len, base_shift) and (max_image_seq_len, max_shift);
schnell-style models use a fixed `shift` (1.0: no shift). That is the "simple" schedule. The others
keep its first and last sigma and space the N sigmas between them anew (diffusers' use_karras_sigmas,
use_exponential_sigmas, use_beta_sigmas). A final 0 is appended. The arithmetic is done in the
reference's precision (float32, the respacing in float64), so the schedules match to the last bit.
Every sampler walks the same schedule (mflux_core.sampling.samplers).
"""

import math

import numpy as np

from mflux_core.settings_schema import SCHEDULE_LABELS

SCHEDULES = tuple(SCHEDULE_LABELS)
# diffusers' FlowMatchEulerDiscreteScheduler flags a model's scheduler_config.json may set, and what they stand for
CONFIG_SCHEDULES = (("use_karras_sigmas", "karras"), ("use_exponential_sigmas", "exponential"),
                    ("use_beta_sigmas", "beta"))
CONFIG_SAMPLERS = (("stochastic_sampling", "euler_a"),)
KARRAS_RHO = 7.0  # Karras et al. (2022), as diffusers
BETA_ALPHA = BETA_BETA = 0.6  # "Beta Sampling is All You Need" (2024), as diffusers


def respaced(first: float, last: float, num_steps: int, schedule: str) -> np.ndarray:
    """`num_steps` float64 sigmas from `first` down to `last`, spaced as the schedule says."""
    if schedule == "karras":
        ramp = np.linspace(0, 1, num_steps)
        high, low = first ** (1 / KARRAS_RHO), last ** (1 / KARRAS_RHO)
        return (high + ramp * (low - high)) ** KARRAS_RHO
    if schedule == "exponential":
        return np.exp(np.linspace(math.log(first), math.log(last), num_steps))
    if schedule == "beta":
        from scipy.stats import beta  # the inverse of the regularised incomplete beta function

        quantiles = beta.ppf(1 - np.linspace(0, 1, num_steps), BETA_ALPHA, BETA_BETA)
        return last + quantiles * (first - last)
    raise ValueError(f"unknown schedule {schedule!r}")


def configured_sampling(scheduler_config: dict) -> dict:
    """The schedule and sampler a model's scheduler config asks for, where it sets diffusers' flags for them (a
    fine-tune shipped with Karras sigmas), as diffusers' pipeline would run it."""
    found = {"schedule": next((name for flag, name in CONFIG_SCHEDULES if scheduler_config.get(flag)), None),
             "sampler": next((name for flag, name in CONFIG_SAMPLERS if scheduler_config.get(flag)), None)}
    return {key: value for key, value in found.items() if value}


def resolution_shift_mu(image_seq_len: int, scheduler_config: dict) -> float:
    base_len = scheduler_config.get("base_image_seq_len", 256)
    max_len = scheduler_config.get("max_image_seq_len", 4096)
    base_shift = scheduler_config.get("base_shift", 0.5)
    max_shift = scheduler_config.get("max_shift", 1.15)
    slope = (max_shift - base_shift) / (max_len - base_len)
    return image_seq_len * slope + (base_shift - slope * base_len)


def flux_sigmas(num_steps: int, image_seq_len: int, scheduler_config: dict, schedule: str = "simple") -> np.ndarray:
    """num_steps + 1 float32 sigmas from 1 down to 0."""
    sigmas = np.linspace(1.0, 1.0 / num_steps, num_steps).astype(np.float32)
    if scheduler_config.get("use_dynamic_shifting", False):
        mu = resolution_shift_mu(image_seq_len, scheduler_config)
        if scheduler_config.get("time_shift_type", "exponential") == "linear":
            sigmas = mu / (mu + (1 / sigmas - 1))
        else:
            sigmas = math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))
    else:
        shift = scheduler_config.get("shift", 1.0)
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    terminal = scheduler_config.get("shift_terminal")
    if terminal:
        one_minus = 1 - sigmas
        sigmas = 1 - one_minus / (one_minus[-1] / (1 - terminal))
    if schedule != "simple":
        sigmas = respaced(float(sigmas[0]), float(sigmas[-1]), num_steps, schedule)
    return np.concatenate([sigmas.astype(np.float32), np.zeros(1, np.float32)])


def img2img_start_step(num_steps: int, image_strength: float) -> int:
    """First step to run when keeping `image_strength` of the input image (mflux's meaning).

    diffusers' img2img runs `strength = 1 - image_strength` of the schedule:
    init = min(N * strength, N); start = int(max(N - init, 0)). Any strength above 0 skips one step at least, as
    mflux and A1111 count it, where that leaves a step to run: where diffusers' rounding gives 0 (0.2 at 4 steps),
    its first step starts from pure noise, and the image would do nothing.
    """
    strength = 1.0 - image_strength
    init_steps = min(num_steps * strength, num_steps)
    start = int(max(num_steps - init_steps, 0))
    return 1 if start == 0 and image_strength > 0 and num_steps > 1 else start
