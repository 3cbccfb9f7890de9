"""Experiments the examples run side by side in every backend (training curves, fine-tuning); not library API."""
