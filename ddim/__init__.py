"""DDIM: the eta-step sampler and its inversion (Song, Meng & Ermon 2021)."""
from .inversion import Trajectory, ddim_invert, ddim_invert_step
from .sampler import ddim_sample, ddim_sigma, ddim_step, resolve_final_alpha_bar

__all__ = ["Trajectory", "ddim_invert", "ddim_invert_step", "ddim_sample", "ddim_sigma", "ddim_step", "resolve_final_alpha_bar"]
