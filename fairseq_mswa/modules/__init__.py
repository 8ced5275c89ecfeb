"""Layers and building blocks: positions (relative, rotary), attention layers, norms, feed-forwards."""
