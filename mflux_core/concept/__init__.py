"""ConceptAttention heatmaps: where in an image each concept (a word or phrase) is."""
