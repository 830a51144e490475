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
- dpm++2m_sde (A1111's "DPM++ 2M SDE"): the same scheduler with algorithm_type "sde-dpmsolver++": each step
  also noised afresh (step_noise, as Euler a) by sigma_next sqrt(1 - e^-2h).
- unipc (A1111's "UniPC"): UniPCMultistepScheduler with use_flow_sigmas, prediction_type "flow_prediction",
  predict_x0, solver_type "bh2", solver_order 2, lower_order_final, final_sigmas_type "zero" (diffusers'
  defaults; A1111's own UniPC defaults to bh1 at order 3): each step first corrects the sample the last step
  predicted, with the model's output at it (no extra evaluation), then predicts the next sample.

A sampler object lives for one run (the multistep ones keep earlier steps, the stochastic ones their seed);
`new_sampler` makes one.
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


def flow_lambda_step(sigma: np.float32, sigma_next: np.float32) -> np.float32:
    """h = lambda(sigma_next) - lambda(sigma): inf on the step to sigma 0."""
    with np.errstate(invalid="ignore", over="ignore"):
        return log_snr(sigma_next) - log_snr(sigma)


class DpmPlusPlus2M:
    """DPM++ 2M; with a seed, DPM++ 2M SDE (its noise drawn as Euler a's)."""

    def __init__(self, seed: int | None = None):
        self.seed = seed
        self.previous: tuple[mx.array, np.float32] | None = None  # the last step's data prediction and its lambda

    def step(self, velocity: Velocity, latents: mx.array, sigmas: np.ndarray, i: int) -> mx.array:
        sigma, sigma_next = f32(sigmas[i]), f32(sigmas[i + 1])
        denoised = latents - float(sigma) * velocity(latents, sigma)
        lambda_s = log_snr(sigma)
        h = flow_lambda_step(sigma, sigma_next)
        with np.errstate(invalid="ignore", over="ignore"):
            if self.seed is None:
                decay, blend = sigma_next / sigma, (f32(1) - sigma_next) * (np.exp(-h) - f32(1))
            else:  # blend = -alpha_t (1 - e^-2h), so both variants read x_t = decay x - blend D
                decay = sigma_next / sigma * np.exp(-h)
                blend = -((f32(1) - sigma_next) * (f32(1) - np.exp(f32(-2) * h)))
        result = float(decay) * latents - float(blend) * denoised
        if self.previous is not None and sigma_next != 0:  # second order, except on the last step (as diffusers)
            previous, lambda_previous = self.previous
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = (lambda_s - lambda_previous) / h
                inverse = f32(1) / ratio
            result = result - float(f32(0.5) * blend) * (float(inverse) * (denoised - previous))
        if self.seed is not None and sigma_next != 0:
            noise = step_noise(self.seed, len(sigmas) - 1, i, latents.shape)
            result = result + float(sigma_next * np.sqrt(f32(1) - np.exp(f32(-2) * h))) * noise
        self.previous = (denoised, lambda_s)
        return result


class UniPC:
    """Predictor-corrector: each step corrects the last prediction (UniC), then predicts the next sample (UniP)."""

    def __init__(self):
        self.outputs: list[tuple[mx.array, int]] = []  # the last two steps' data predictions and their sigma index
        self.last: tuple[mx.array, int] | None = None  # the sample the last prediction started from, and its order

    def step(self, velocity: Velocity, latents: mx.array, sigmas: np.ndarray, i: int) -> mx.array:
        denoised = latents - float(f32(sigmas[i])) * velocity(latents, sigmas[i])
        if self.last is not None:
            latents = self.corrected(latents, denoised, sigmas, i)
        self.outputs = (self.outputs + [(denoised, i)])[-2:]
        order = min(2, len(sigmas) - 1 - i, len(self.outputs))  # first order to warm up and on the last step
        self.last = (latents, order)
        return self.predicted(latents, sigmas, i, order)

    def predicted(self, latents: mx.array, sigmas: np.ndarray, i: int, order: int) -> mx.array:
        """UniP: from sigmas[i] to sigmas[i + 1]."""
        current, _ = self.outputs[-1]
        sigma, sigma_next = f32(sigmas[i]), f32(sigmas[i + 1])
        h = flow_lambda_step(sigma, sigma_next)
        decay, b_h = self.decay_and_b(sigma, sigma_next, h)
        scale = float((f32(1) - sigma_next) * b_h)
        result = float(decay) * latents - scale * current
        if order == 2:
            earlier, index = self.outputs[-2]
            rk = flow_lambda_step(sigma, f32(sigmas[index])) / h
            result = result - scale * (f32(0.5) * ((earlier - current) / float(rk)))
        return result

    def corrected(self, latents: mx.array, denoised: mx.array, sigmas: np.ndarray, i: int) -> mx.array:
        """UniC: the last prediction (sigmas[i - 1] to sigmas[i]) redone with the model's output at its result."""
        start, order = self.last
        previous, _ = self.outputs[-1]
        sigma, sigma_next = f32(sigmas[i - 1]), f32(sigmas[i])
        h = flow_lambda_step(sigma, sigma_next)
        decay, b_h = self.decay_and_b(sigma, sigma_next, h)
        scale = float((f32(1) - sigma_next) * b_h)
        result = float(decay) * start - scale * previous
        if order == 1:
            return result - scale * (f32(0.5) * (denoised - previous))
        earlier, index = self.outputs[-2]
        rk = flow_lambda_step(sigma, f32(sigmas[index])) / h
        rhos = np.linalg.solve(np.array([[1, 1], [rk, 1]], np.float32), self.b_coefficients(h, b_h))
        earlier_slope, this_slope = (earlier - previous) / float(rk), denoised - previous
        return result - scale * (float(rhos[0]) * earlier_slope + float(rhos[1]) * this_slope)

    @staticmethod
    def decay_and_b(sigma: np.float32, sigma_next: np.float32, h: np.float32) -> tuple[np.float32, np.float32]:
        """sigma_t / sigma_s and B(h) = e^-h - 1 (bh2; also h phi_1 here, as predict_x0 uses -h)."""
        return sigma_next / sigma, np.expm1(-h)

    @staticmethod
    def b_coefficients(h: np.float32, b_h: np.float32) -> np.ndarray:
        """UniC's right-hand side for order 2: h phi_k(-h) k! / B(h) for k = 1, 2."""
        phi = b_h / -h - f32(1)
        first = phi / b_h
        phi = phi / -h - f32(0.5)
        return np.array([first, phi * f32(2) / b_h], np.float32)


SAMPLER_CLASSES = {"euler": Euler, "euler_a": EulerAncestral, "heun": Heun, "dpm++2m": DpmPlusPlus2M,
                   "dpm++2m_sde": DpmPlusPlus2M, "unipc": UniPC}
STOCHASTIC = ("euler_a", "dpm++2m_sde")  # new noise each step, drawn from the seed
SAMPLERS = tuple(SAMPLER_LABELS)
assert set(SAMPLER_CLASSES) == set(SAMPLERS), "every sampler name needs its class"


def new_sampler(name: str = "euler", seed: int = 0):
    """A fresh sampler (its own state) for one run; `seed` draws the stochastic samplers' step noise."""
    return SAMPLER_CLASSES[name](seed) if name in STOCHASTIC else SAMPLER_CLASSES[name]()
