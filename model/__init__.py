"""Flax NNX transformer modules: embeddings, attention, MLP, blocks, stacks and heads."""
