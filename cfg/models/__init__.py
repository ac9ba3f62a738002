"""Denoising networks ε_θ(z_λ, λ, c)."""

from cfg.models.unet import UNet, count_params

__all__ = ['UNet', 'count_params']
