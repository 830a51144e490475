"""The demo model family: procedural shapes data, tokenizers, training recipes and export."""
