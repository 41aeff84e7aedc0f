"""Image editing inside the U-Net, written against the :class:`unet.Editor` hooks.

- ``token_maps``: which source token's attention each target token takes (word swap, refinement,
  re-weighting);
- ``attention_store``: the running average of the attention maps, aggregated per resolution;
- ``prompt_to_prompt``: Prompt-to-Prompt's controller (Hertz et al. 2022), its three edits
  (``WordSwap``, ``Refinement``, ``Reweight``), when they are injected (``Injection``) and local
  blending (``LocalBlend``);
- ``null_text``: inverting a real image for editing: null-text inversion (Mokady et al. 2023),
  negative-prompt inversion (Miyake et al. 2023), and the plain DDIM-inversion baseline;
- ``attention_maps``: figures of the stored maps: per-token cross-attention, self-attention
  components, the edit grid.
"""
from .attention_maps import (SelfAttentionComponents, edit_grid, heatmaps, self_attention_components,
                             self_attention_figure, token_heatmaps, per_token_maps)
from .attention_store import AttentionStore
from .null_text import (Inversion, NullTextResult, ddim_inversion, negative_prompt_inversion, null_text_inversion,
                        optimise_null_text)
from .prompt_to_prompt import (EditResult, Injection, LocalBlend, PromptToPrompt, Refinement, Reweight, WordSwap,
                               prompt_to_prompt)
from .token_maps import equalizer, needleman_wunsch, refinement_map, refinement_maps, replacement_map, replacement_maps

__all__ = ["SelfAttentionComponents", "edit_grid", "heatmaps", "self_attention_components", "self_attention_figure",
           "token_heatmaps", "per_token_maps", "AttentionStore", "EditResult", "Injection", "LocalBlend",
           "PromptToPrompt", "Refinement", "Reweight", "WordSwap", "equalizer", "needleman_wunsch",
           "prompt_to_prompt", "refinement_map", "refinement_maps", "replacement_map", "replacement_maps",
           "Inversion", "NullTextResult", "ddim_inversion", "negative_prompt_inversion",
           "null_text_inversion", "optimise_null_text"]
