"""Redux (FLUX.1-Redux-dev): variations of reference images, steered by the prompt.

Each reference image goes through SigLIP and the Redux embedder, which turn it into N extra text
tokens at the T5 width (N = 729 for the published weights); they are appended after the prompt's
T5 tokens, so the unchanged base transformer (dev or schnell) sees a text sequence of 512 + n * N
tokens for n images. The CLIP pooled vector is the prompt's.

Strengths follow mflux's `--redux-image-strengths` (default 1.0 each): image i's tokens R_i are
multiplied by s_i and nothing else changes,

    text = [T5; s_1 R_1; ...; s_n R_n]              pooled = P.

diffusers' FluxPriorReduxPipeline takes `prompt_embeds_scale` p_i and `pooled_prompt_embeds_scale`
q_i instead and sums over the images,

    text = sum_i p_i [T5; R_i]                      pooled = (sum_i q_i) P,

so its images' tokens are added position by position (the sequence stays 512 + N long) and a scale
other than 1 scales the prompt's tokens and pooled vector too. The two coincide exactly when there
is one image and s = p = q = 1, the defaults of both; then this tool's image equals
FluxPriorReduxPipeline + FluxPipeline's. No diffusers setting reproduces any other case.

Guidance defaults to 2.5, the value of BFL's reference Redux script (flux/cli_redux.py) and of
diffusers' Redux example with dev; mflux's `mflux-generate-redux` falls back to its general 3.5.

On a demo model the default weights are demo-redux, the tiny Redux taught with the demo family
(mflux_core/demo/redux_encoder.py): Redux weights only fit the transformer family they were made for.
"""

from PIL import Image

from mflux_core.errors import InvalidRequest, ModelLoadError
from mflux_core.flux_model import FluxModel
from mflux_core.generation import ToolInputs
from mflux_core.images.io import load_image
from mflux_core.memory import redux_encode_bytes
from mflux_core.models.redux import ReduxEncoder, append_redux_tokens
from mflux_core.request import GenerationRequest, existing_file
from mflux_core.tools.engine import ToolEngine
from mflux_core.tools.common import (
    check_in_channels, packed_channels, prompt_conditioning, with_size,
)
from mflux_core.weights.resolve import side_model_for

DEFAULT_STRENGTH = 1.0
DEFAULT_WEIGHTS = "redux"  # alias of black-forest-labs/FLUX.1-Redux-dev (weights/resolve.py)


def redux_images(request: GenerationRequest) -> list[Image.Image]:
    if not request.redux_image_paths:
        raise InvalidRequest("Redux needs at least one reference image: pass --redux-image-paths.")
    return [load_image(existing_file(path, "Redux image")) for path in request.redux_image_paths]


def redux_encoder(model: FluxModel, request: GenerationRequest, engine: ToolEngine) -> ReduxEncoder:
    """The Redux weights of `--redux-path` (else the published ones, or demo-redux on a demo model), checked against
    the transformer's text width."""
    name = request.extra.get("redux_path") or side_model_for(model.folder, DEFAULT_WEIGHTS)
    encoder = engine.auxiliary_model(name, lambda folder: ReduxEncoder.from_folder(folder, dtype=model.dtype),
                                     beside=model)
    token_width = encoder.token_width
    if token_width != model.config.joint_attention_dim:
        raise ModelLoadError(
            f"The Redux weights {name} make {token_width}-wide tokens but the model {model.name or model.folder} "
            f"takes {model.config.joint_attention_dim}-wide text tokens: they do not belong together."
        )
    return encoder


def build_inputs(model: FluxModel, request: GenerationRequest, engine: ToolEngine) -> ToolInputs:
    check_in_channels(model, packed_channels(model), "Redux", "base (dev or schnell)")
    images = redux_images(request)
    strengths = request.redux_image_strengths or (DEFAULT_STRENGTH,) * len(images)
    request = with_size(request, native_side=model.native_side)
    request = request.with_(redux_image_strengths=strengths)
    encoder = redux_encoder(model, request, engine)
    # The encoder may be cached from a request in another dtype: the tokens follow this model's.
    tokens = [encoder.encode_image(image).astype(model.dtype) for image in images]
    conditioning = prompt_conditioning(model, request)
    conditioning.with_prompt_tokens(lambda text: append_redux_tokens(text, tokens, list(strengths)))
    held = sum(t.nbytes for t in tokens[:-1])  # the earlier images' tokens, while the last one is encoded
    encoding = redux_encode_bytes(encoder.image_encoder.config, encoder.token_width, encoder.itemsize) + held
    return ToolInputs(request, conditioning, estimated=(("encoding the Redux images", encoding),))
