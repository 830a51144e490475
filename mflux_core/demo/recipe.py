"""The demo family's training recipe: each stage's steps, batch, learning rate, pool, seed and sizes."""

from dataclasses import dataclass, replace

import mlx.optimizers as optim

from mflux_core.demo.family import IMAGE_SIZE


@dataclass(frozen=True)
class StageSettings:
    steps: int
    batch: int
    learning_rate: float
    pool: int  # examples rendered for the stage
    seed: int
    sides: tuple[int, ...] = (IMAGE_SIZE,)  # picture sides (px) it trains at, every pairing: (48, 64) -> 4 sizes
    native_share: float | None = None  # share of its steps at family.NATIVE_SIZE; None: every size alike
    @property
    def sizes(self) -> tuple[tuple[int, int], ...]:
        """(width, height) of every size it trains at."""
        return tuple((width, height) for height in self.sides for width in self.sides)


# The sizes stages' sizes: sides 48 to 96 px (3 to 6 tokens), a quarter of the steps at 64x64 so that the family
# keeps what it does there. Started from the 64 px family over sides up to 128 (36 sizes), 3,000 teacher steps
# still painted shapes twice at 128 px and lost placement at 64x64 (README, Demo models).
TUNED_SIZES = dict(sides=(48, 64, 80, 96), native_share=0.25)
# The base's second to fourth rounds and Fill's, Depth's and Kontext's second, each from the round before's shipped
# weights restored by restore.py (the first: TUNED_SIZES; the base's 4,000 + 2,000 steps, Fill's and Depth's 600,
# Kontext's 3,000 from the sized base at 5e-4), and the canny ControlNet's first shipped round: sides up to 128
# (README, "Sizes stages").
BASE_SIZES = dict(sides=(48, 64, 80, 96, 112, 128), native_share=0.25)

STAGES = {  # sized for a 2-core CPU: about three hours in all (README's demo section has the timings)
    "vae": StageSettings(steps=4000, batch=8, learning_rate=1e-3, pool=6000, seed=1),
    "decoder": StageSettings(steps=10000, batch=8, learning_rate=5e-4, pool=0, seed=6),
    "sharpen": StageSettings(steps=3000, batch=8, learning_rate=2.5e-4, pool=0, seed=10),
    "base": StageSettings(steps=3500, batch=64, learning_rate=1e-3, pool=15000, seed=2),
    "teacher": StageSettings(steps=1000, batch=64, learning_rate=3e-4, pool=0, seed=8),  # pool: the base's
    "guidance": StageSettings(steps=1500, batch=64, learning_rate=3e-4, pool=0, seed=9),
    "fill": StageSettings(steps=600, batch=64, learning_rate=5e-4, pool=6000, seed=3),
    "depth": StageSettings(steps=1400, batch=64, learning_rate=5e-4, pool=6000, seed=4),
    "kontext": StageSettings(steps=2500, batch=64, learning_rate=5e-4, pool=6000, seed=5),
    "canny": StageSettings(steps=3000, batch=64, learning_rate=5e-4, pool=6000, seed=7),
    "upscale": StageSettings(steps=1800, batch=64, learning_rate=5e-4, pool=6000, seed=12),
    # size_stages.py: the finished family tuned at more sizes; pool: examples per size
    "teacher-sizes": StageSettings(steps=2400, batch=64, learning_rate=3e-4, pool=2000, seed=13, **BASE_SIZES),
    "guidance-sizes": StageSettings(steps=1200, batch=64, learning_rate=3e-4, pool=0, seed=14,  # the teacher's pool
                                    **BASE_SIZES),
    "fill-sizes": StageSettings(steps=1200, batch=64, learning_rate=3e-4, pool=1000, seed=15, **BASE_SIZES),
    "depth-sizes": StageSettings(steps=1200, batch=64, learning_rate=3e-4, pool=1000, seed=16, **BASE_SIZES),
    "kontext-sizes": StageSettings(steps=2400, batch=64, learning_rate=3e-4, pool=1000, seed=20, **BASE_SIZES),
    "canny-sizes": StageSettings(steps=1200, batch=64, learning_rate=3e-4, pool=1000, seed=18, **BASE_SIZES),
    "upscale-sizes": StageSettings(steps=600, batch=64, learning_rate=3e-4, pool=1000, seed=19, **TUNED_SIZES),
    # token_reading.py: the shipped base taught to read captions from T5 tokens alone; pool: examples per size
    "token-reading": StageSettings(steps=6000, batch=64, learning_rate=5e-4, pool=500, seed=21, **BASE_SIZES),
}


def optimizer_for(settings: StageSettings) -> optim.Optimizer:
    """AdamW with a short linear warm-up into a cosine decay to a tenth of the rate."""
    warmup = max(1, min(200, settings.steps // 10))
    schedule = optim.join_schedules(
        [optim.linear_schedule(settings.learning_rate * 0.01, settings.learning_rate, warmup),
         optim.cosine_decay(settings.learning_rate, max(1, settings.steps - warmup), settings.learning_rate * 0.1)],
        [warmup],
    )
    return optim.AdamW(learning_rate=schedule, weight_decay=0.01, bias_correction=True)


def scaled(recipe: dict[str, StageSettings], factor: float, batch: int | None = None) -> dict[str, StageSettings]:
    """The recipe with every stage's steps and pool multiplied by `factor` (and the batch replaced):
    quick tries and tests, not the shipped weights."""
    return {name: replace(s, steps=max(1, int(s.steps * factor)), batch=batch or s.batch,
                          pool=max(8, int(s.pool * factor)))
            for name, s in recipe.items()}
