"""The transformer config.json keys a FLUX.1 file without one (a BFL single file, a ControlNet file, an mflux-saved
folder) gives through its tensor shapes."""

FLUX1_AXES_DIMS_ROPE = (16, 56, 56)  # FLUX.1's head dim 128 split over (image index, row, column)


def shared_config(image_in: tuple[int, int], text_in: tuple[int, int], pooled_in: tuple[int, int], head_dim: int,
                  axes_dims_rope: tuple[int, ...], layers: tuple[int, int], guidance_embeds: bool) -> dict:
    """The config.json keys a transformer and a ControlNet share, from the (rows, columns) of the image, text and
    pooled input projections, whatever a file calls them."""
    hidden_size, in_channels = image_in
    return {
        "in_channels": in_channels,
        "num_layers": layers[0],
        "num_single_layers": layers[1],
        "attention_head_dim": head_dim,
        "num_attention_heads": hidden_size // head_dim,
        "joint_attention_dim": text_in[1],
        "pooled_projection_dim": pooled_in[1],
        "guidance_embeds": guidance_embeds,
        "axes_dims_rope": list(axes_dims_rope),
    }
