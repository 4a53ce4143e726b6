"""Diffusion models for medical anomaly detection, on OpenAI guided diffusion."""
