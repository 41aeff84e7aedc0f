"""DDIM: the eta-step sampler and its inversion (Song, Meng & Ermon 2021)."""
from .inversion import ddim_invert, ddim_invert_step
from .sampler import ddim_sample, ddim_sigma, ddim_step, resolve_final_alpha_bar

__all__ = ["ddim_invert", "ddim_invert_step", "ddim_sample", "ddim_sigma", "ddim_step", "resolve_final_alpha_bar"]
