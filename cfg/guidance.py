"""Classifier-free guidance (paper Eq. 6).

Convention used throughout the code: the guidance *weight* w of the paper,

    ε̃ = (1 + w) ε(z, c) − w ε(z, ∅),

so w = 0 is the plain conditional model and w = −1 the unconditional one. Most later work
(diffusers, EDM, guidance interval, autoguidance) writes the *scale* s = 1 + w:
ε̃ = ε_u + s (ε_c − ε_u). `scale_from_weight` converts for display.

The null label ∅ is the extra class index `num_classes` (the model has num_classes + 1
label embeddings).
"""

import jax.numpy as jnp

from cfg.diffusion import broadcast_from_left


def scale_from_weight(guidance_weight):
  """s = 1 + w (the diffusers / EDM "guidance scale")."""
  return 1.0 + guidance_weight


def combine(*, eps_cond, eps_uncond, guidance_weight):
  """ε̃ = (1 + w) ε_c − w ε_u; w is a scalar or a per-example vector [B]."""
  w = broadcast_from_left(guidance_weight, eps_cond.shape).astype(eps_cond.dtype)
  return (1.0 + w) * eps_cond - w * eps_uncond


def conditional_and_unconditional_eps(denoise, z, logsnr, labels, *, null_label):
  """(ε_c, ε_u) from ONE call of `denoise` on the concatenated batch [z; z] with labels [c; ∅]."""
  logsnr = jnp.broadcast_to(logsnr, labels.shape)
  eps = denoise(jnp.concatenate([z, z]), jnp.concatenate([logsnr, logsnr]),
                jnp.concatenate([labels, jnp.full_like(labels, null_label)]))
  eps_cond, eps_uncond = jnp.split(eps, 2)
  return eps_cond, eps_uncond


def guided_eps(denoise, z, logsnr, labels, *, guidance_weight, null_label):
  """ε̃ = (1 + w) ε(z, c) − w ε(z, ∅), both branches from one batched network call of size 2B."""
  eps_cond, eps_uncond = conditional_and_unconditional_eps(
      denoise, z, logsnr, labels, null_label=null_label)
  return combine(eps_cond=eps_cond, eps_uncond=eps_uncond, guidance_weight=guidance_weight)
