"""Image editing inside the U-Net: Prompt-to-Prompt's token maps (more editors to come)."""
from .token_maps import equalizer, needleman_wunsch, refinement_map, refinement_maps, replacement_map, replacement_maps

__all__ = ["equalizer", "needleman_wunsch", "refinement_map", "refinement_maps", "replacement_map", "replacement_maps"]
