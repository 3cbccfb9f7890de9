"""The framework-free core: config, canonical weights, validation, files, tokenizer, data, recipe, sampling and
decoding. It imports no framework and nothing above it; every backend and tool builds on it."""
