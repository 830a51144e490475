"""The generic training loop: exact resume, parameter filters, bounded runs, checkpoints, loss curve."""

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten
from PIL import Image

from mflux_core.models.rope import rope_tables
from mflux_core.models.transformer import FluxTransformer, FluxTransformerConfig
from mflux_core.sampling.latents import image_position_ids
from mflux_core.training import select_trainable, train
from mflux_core.training.flow_matching import FlowBatch, flow_matching_loss, shifted_sigmas
from mflux_core.training.loop import LOSS_CURVE_FILE, STATE_FILE

SCHEDULER = {"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
             "base_image_seq_len": 256, "max_image_seq_len": 4096}


def tiny_transformer(seed: int = 0) -> FluxTransformer:
    mx.random.seed(seed)
    config = FluxTransformerConfig(
        in_channels=16, out_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=12, pooled_projection_dim=10, guidance_embeds=True,
        axes_dims_rope=(2, 2, 4),
    )
    model = FluxTransformer(config)
    mx.eval(model.parameters())
    return model


def batch_for_step(step: int) -> FlowBatch:
    """Everything random in the batch is a function of the step: the precondition for exact resume."""
    rng = np.random.default_rng([7, step])
    b, n, c = 3, 16, 16
    normal = lambda *shape: mx.array(rng.standard_normal(shape).astype(np.float32))  # noqa: E731
    ids = image_position_ids(8, 8)
    return FlowBatch(
        latents=normal(b, n, c), noise=normal(b, n, c),
        sigmas=mx.array(shifted_sigmas(rng, b, n, SCHEDULER)),
        text=normal(b, 5, 12), pooled=normal(b, 10), image_ids=ids,
        guidance=mx.array(rng.uniform(1, 5, b).astype(np.float32)),
        rope=rope_tables(np.concatenate([np.zeros((5, 3)), np.array(ids)]), (2, 2, 4)),
    )


def weights(model) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in tree_flatten(model.parameters())}


def run(steps: int, checkpoint_dir=None, trainable=None, compile=False):
    model = tiny_transformer()
    optimizer = optim.AdamW(learning_rate=optim.cosine_decay(1e-2, 8), weight_decay=0.01)
    result = train(model, flow_matching_loss, batch_for_step, optimizer, steps, trainable=trainable,
                   checkpoint_dir=checkpoint_dir, checkpoint_every=2, progress=False, compile=compile)
    return model, result


@pytest.mark.parametrize("compile", [False, True])
def test_resume_from_a_checkpoint_reproduces_an_uninterrupted_run_bit_for_bit(tmp_path, compile):
    straight, straight_result = run(7, compile=compile)
    run(3, checkpoint_dir=tmp_path / "ckpt", compile=compile)  # stops at step 3, between periodic checkpoints
    resumed, resumed_result = run(7, checkpoint_dir=tmp_path / "ckpt", compile=compile)  # fresh model and optimizer

    assert resumed_result.step == straight_result.step == 7
    assert resumed_result.losses == straight_result.losses
    expected, actual = weights(straight), weights(resumed)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert np.array_equal(expected[name], actual[name]), name
    assert straight_result.losses[-1] != straight_result.losses[0]  # the run did train


def test_a_compiled_step_trains_like_the_plain_one():
    plain, plain_result = run(4)
    compiled, compiled_result = run(4, compile=True)
    assert np.allclose(plain_result.losses, compiled_result.losses, rtol=1e-4, atol=1e-6)
    for name, value in weights(plain).items():
        assert np.allclose(value, weights(compiled)[name], rtol=1e-3, atol=1e-5), name


def test_only_selected_parameters_change():
    before = weights(tiny_transformer())
    model, _ = run(2, trainable=lambda name: name.startswith("x_embedder.") or ".attn.norm_q." in name)
    after = weights(model)
    changed = {name for name in before if not np.array_equal(before[name], after[name])}
    assert changed == {"x_embedder.weight", "x_embedder.bias", "transformer_blocks.0.attn.norm_q.weight",
                       "single_transformer_blocks.0.attn.norm_q.weight"}


def test_select_trainable_counts_parameters():
    model = tiny_transformer()
    total = sum(v.size for _, v in tree_flatten(model.parameters()))
    assert select_trainable(model, None) == total
    assert select_trainable(model, lambda name: name == "proj_out.bias") == 16
    assert select_trainable(model, None) == total  # filters do not accumulate


def test_a_time_bound_stops_early_and_the_next_call_continues(tmp_path):
    model = tiny_transformer()
    optimizer = optim.AdamW(learning_rate=1e-3)
    result = train(model, flow_matching_loss, batch_for_step, optimizer, 5, checkpoint_dir=tmp_path,
                   max_seconds=0.0, progress=False)
    assert (result.step, result.finished) == (0, False)
    result = train(tiny_transformer(), flow_matching_loss, batch_for_step, optim.AdamW(learning_rate=1e-3), 5,
                   checkpoint_dir=tmp_path, checkpoint_every=100, progress=False)
    assert (result.step, result.finished, len(result.losses)) == (5, True, 5)
    assert (tmp_path / STATE_FILE).is_file()  # written at the end even between periodic checkpoints
    curve = Image.open(tmp_path / LOSS_CURVE_FILE)
    assert curve.size == (640, 360) and len(set(curve.convert("RGB").getdata())) > 2


def test_flow_matching_loss_is_zero_for_the_true_velocity():
    batch = batch_for_step(0)
    oracle = lambda x, *args, **kwargs: batch.noise - batch.latents  # noqa: E731
    assert float(flow_matching_loss(oracle, batch)) == 0.0
    sigmas = shifted_sigmas(np.random.default_rng(0), 1000, 16, SCHEDULER)
    assert 0 < sigmas.min() and sigmas.max() < 1
    assert np.median(sigmas) > 0.55  # shifted towards noise like the dev schedule (mu 0.459 at 16 tokens)


def test_token_weights_average_the_loss_over_the_tokens_they_weigh():
    batch = batch_for_step(0)
    predictor = lambda x, *args, **kwargs: mx.zeros_like(batch.latents)  # noqa: E731
    per_token = np.mean(np.square(np.array(batch.noise - batch.latents)), axis=-1)
    weights = np.zeros(per_token.shape, np.float32)
    weights[:, 0], weights[:, 1] = 3.0, 1.0
    batch.token_weights = mx.array(weights)
    expected = (3 * per_token[:, 0] + per_token[:, 1]).sum() / (4 * per_token.shape[0])
    assert float(flow_matching_loss(predictor, batch)) == pytest.approx(expected, rel=1e-5)
    batch.token_weights = mx.ones(per_token.shape)
    assert float(flow_matching_loss(predictor, batch)) == pytest.approx(per_token.mean(), rel=1e-5)
