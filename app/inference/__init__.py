"""Inference: the text encoder and the micro-batcher in front of it."""
