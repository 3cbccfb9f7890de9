"""PyTorch backend: GPT-2 LM and classifier as ``nn.Module``s, and their canonical-weight converter."""
