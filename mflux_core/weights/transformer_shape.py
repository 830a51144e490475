"""What a FLUX.1 transformer's tensors fix about the model around it, read without loading anything: from a single
file's header (BFL names) or a folder's transformer/config.json. A single file runs with another folder's VAE, text
encoders, scheduler and position axes; its shape says which folders fit it and what kind of model it is."""

from dataclasses import dataclass
from pathlib import Path

from mflux_core.errors import ModelLoadError
from mflux_core.weights.bfl import COMFY_PREFIX
from mflux_core.weights.component_folder import component_config
from mflux_core.weights.flux_config import FLUX1_AXES_DIMS_ROPE
from mflux_core.weights.gguf_file import gguf_shapes, is_gguf
from mflux_core.weights.resolve import tensor_shapes


@dataclass(frozen=True)
class TransformerShape:
    in_channels: int  # per token: the image latents', plus a control image's or a Fill mask's
    out_channels: int  # per token: the latents' (the VAE's latent channels x 4)
    head_dim: int  # the position axes of the folder it runs with must add up to it
    text_width: int  # T5's hidden size
    pooled_width: int  # CLIP's pooled size

    @property
    def kind(self) -> str:
        """A registry kind: a Fill model's tokens carry the masked image and the mask besides the latents; a
        Depth or Canny model's the control image's latents; a base (or Kontext) model's only the latents."""
        if self.in_channels == self.out_channels:
            return "base"
        return "depth" if self.in_channels == 2 * self.out_channels else "fill"

    def runs_with(self, other: "TransformerShape") -> bool:
        """Whether a folder whose transformer has `other`'s shape supplies the VAE, text encoders and position
        axes this transformer needs."""
        return (self.out_channels, self.head_dim, self.text_width, self.pooled_width) == (
            other.out_channels, other.head_dim, other.text_width, other.pooled_width)


def single_file_shape(path: Path) -> TransformerShape | None:
    """The shape of a BFL, ComfyUI or GGUF transformer file, from its header; None where the header does not say
    (not a transformer, or a bitsandbytes file, whose matrices are stored flattened)."""
    try:
        shapes = gguf_shapes(path) if is_gguf(path) else tensor_shapes(path)
    except (OSError, ValueError, ModelLoadError):
        return None
    shapes = {name.removeprefix(COMFY_PREFIX): shape for name, shape in shapes.items()}
    head_norm = next((shapes.get(f"{block}.0.{norm}.query_norm.scale") for block, norm in
                      (("double_blocks", "img_attn.norm"), ("single_blocks", "norm"))
                      if f"{block}.0.{norm}.query_norm.scale" in shapes), None)
    matrices = [shapes.get(name) for name in
                ("img_in.weight", "final_layer.linear.weight", "txt_in.weight", "vector_in.in_layer.weight")]
    if head_norm is None or any(shape is None or len(shape) != 2 or 1 in shape for shape in matrices):
        return None
    img_in, final, txt_in, vector_in = matrices
    return TransformerShape(img_in[1], final[0], head_norm[0], txt_in[1], vector_in[1])


def folder_shape(folder: Path) -> TransformerShape | None:
    """The shape a model folder's transformer/config.json gives; None where it has none."""
    try:
        config = component_config(Path(folder) / "transformer")
        in_channels, axes = config.get("in_channels", 64), config.get("axes_dims_rope")  # diffusers' defaults
        return TransformerShape(in_channels, config.get("out_channels") or in_channels,
                                sum(axes or FLUX1_AXES_DIMS_ROPE), config.get("joint_attention_dim", 4096),
                                config.get("pooled_projection_dim", 768))
    except (ModelLoadError, AttributeError, TypeError):
        return None
