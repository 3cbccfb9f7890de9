"""Keras 3 backend: GPT-2 LM and classifier as ``keras.Model``s, and their canonical-weight converter."""
