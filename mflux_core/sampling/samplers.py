"""Samplers: how one step moves the latents from sigmas[i] to sigmas[i + 1], given the model's velocity.

The denoise loop hands a sampler `velocity(latents, sigma)` (one model evaluation: one transformer pass, two
with true CFG) and the schedule; each sampler follows one diffusers scheduler's `step`, operation for
operation in float32, on the sigmas of mflux_core.sampling.schedule:

- euler: FlowMatchEulerDiscreteScheduler. One evaluation a step.
- euler_a (A1111's "Euler a"): FlowMatchEulerDiscreteScheduler with stochastic_sampling: the step's denoised
  estimate noised afresh to the next sigma. New noise each step, drawn from the request's seed (step_noise), so an
  image replays from its settings; the last step (to sigma 0) keeps the estimate.
- heun: FlowMatchHeunDiscreteScheduler. An Euler step, then a second evaluation at the next sigma on its
  result, and the step redone along the mean of both velocities; the last step (to sigma 0) is Euler only,
  so N steps take 2N - 1 evaluations.
- dpm++2m: DPMSolverMultistepScheduler with use_flow_sigmas, prediction_type "flow_prediction",
  algorithm_type "dpmsolver++", solver_order 2, solver_type "midpoint", final_sigmas_type "zero": second
  order from the previous step's data prediction, first order on the first step and on the last.

A sampler object lives for one run (DPM++ 2M keeps the previous step, Euler a its seed); `new_sampler` makes one.
"""

from typing import Callable

import mlx.core as mx
import numpy as np

from mflux_core.settings_schema import SAMPLER_LABELS

Velocity = Callable[[mx.array, float], mx.array]  # (latents, sigma) -> the model's velocity, float32


def f32(value) -> np.float32:
    return np.float32(value)


class Euler:
    def step(self, velocity: Velocity, latents: mx.array, sigmas: np.ndarray, i: int) -> mx.array:
        dt = f32(sigmas[i + 1]) - f32(sigmas[i])
        return latents + float(dt) * velocity(latents, sigmas[i])


def step_noise(seed: int, steps: int, i: int, shape: tuple[int, ...]) -> mx.array:
    """Euler a's noise for step i of `steps`: its own key of the seed's (split from it, so never the initial noise)."""
    return mx.random.normal(shape, dtype=mx.float32, key=mx.random.split(mx.random.key(seed), steps)[i])


class EulerAncestral:
    def __init__(self, seed: int):
        self.seed = seed

    def step(self, velocity: Velocity, latents: mx.array, sigmas: np.ndarray, i: int) -> mx.array:
        sigma, sigma_next = f32(sigmas[i]), f32(sigmas[i + 1])
        denoised = latents - float(sigma) * velocity(latents, sigma)
        if sigma_next == 0:
            return denoised
        noise = step_noise(self.seed, len(sigmas) - 1, i, latents.shape)
        return float(f32(1) - sigma_next) * denoised + float(sigma_next) * noise


class Heun:
    def step(self, velocity: Velocity, latents: mx.array, sigmas: np.ndarray, i: int) -> mx.array:
        sigma, sigma_next = f32(sigmas[i]), f32(sigmas[i + 1])
        dt = float(sigma_next - sigma)
        first = self.derivative(latents, velocity(latents, sigma), sigma)
        predicted = latents + first * dt
        if sigma_next == 0:  # the last step: a velocity at sigma 0 would be divided by 0
            return predicted
        mx.eval(predicted)  # one evaluation's activations at a time, as with true CFG's two passes
        second = self.derivative(predicted, velocity(predicted, sigma_next), sigma_next)
        return latents + 0.5 * (first + second) * dt

    @staticmethod
    def derivative(latents: mx.array, velocity: mx.array, sigma: np.float32) -> mx.array:
        """diffusers' ODE derivative from the denoised estimate: (x - (x - v * sigma)) / sigma (v, up to rounding)."""
        return (latents - (latents - velocity * float(sigma))) / float(sigma)


def log_snr(sigma: np.float32) -> np.float32:
    """lambda = log(alpha) - log(sigma) with alpha = 1 - sigma (flow sigmas); -inf at sigma 1, inf at 0."""
    with np.errstate(divide="ignore"):
        return np.log(f32(1) - sigma) - np.log(sigma)


class DpmPlusPlus2M:
    def __init__(self):
        self.previous: tuple[mx.array, np.float32] | None = None  # the last step's data prediction and its lambda

    def step(self, velocity: Velocity, latents: mx.array, sigmas: np.ndarray, i: int) -> mx.array:
        sigma, sigma_next = f32(sigmas[i]), f32(sigmas[i + 1])
        denoised = latents - float(sigma) * velocity(latents, sigma)
        lambda_s, lambda_t = log_snr(sigma), log_snr(sigma_next)
        with np.errstate(invalid="ignore", over="ignore"):
            h = lambda_t - lambda_s
            blend = (f32(1) - sigma_next) * (np.exp(-h) - f32(1))  # alpha_t * (e^-h - 1)
        result = float(sigma_next / sigma) * latents - float(blend) * denoised
        if self.previous is not None and sigma_next != 0:  # second order, except on the last step (as diffusers)
            previous, lambda_previous = self.previous
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = (lambda_s - lambda_previous) / h
                inverse = f32(1) / ratio
            result = result - float(f32(0.5) * blend) * (float(inverse) * (denoised - previous))
        self.previous = (denoised, lambda_s)
        return result


SAMPLER_CLASSES = {"euler": Euler, "euler_a": EulerAncestral, "heun": Heun, "dpm++2m": DpmPlusPlus2M}
SAMPLERS = tuple(SAMPLER_LABELS)
assert set(SAMPLER_CLASSES) == set(SAMPLERS), "every sampler name needs its class"


def new_sampler(name: str = "euler", seed: int = 0):
    """A fresh sampler (its own state) for one run; `seed` draws Euler a's step noise."""
    return EulerAncestral(seed) if name == "euler_a" else SAMPLER_CLASSES[name]()
