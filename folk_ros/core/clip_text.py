"""CLIP text encoding of tokenised prompts, cut to the prompts' own length.

open_clip pads every prompt to the text tower's context (77 tokens) and runs the transformer over all of
them. The text tower is causal and pools the end-of-text token (``text_pool_type == "argmax"``: the
highest token id), so the positions after the longest prompt's end token never reach an embedding:
running the tower over the first ``L`` positions only (``L`` = the last end token + 1, with the positional
embedding and the causal mask cut to ``L``) gives the same embeddings for a fraction of the work. Our
prompts ("a {} in the scene" with one to four words) are 7-12 tokens: 6-10x less text-encoder time, which
is what the robot waits for at start-up and on every vocabulary change (200 ScanNet200 names on a
ViT-L-14-336: see bench/bench_real_size.py).

Models this does not apply to (open_clip's CustomTextCLIP, other pool types, no causal mask) go through
``model.encode_text`` unchanged. The model is recognised by its attributes (open_clip's ``CLIP`` class of
open-clip-torch 3.3), so this module does not import open_clip (slow to import; folk_ros.core.clip loads it
lazily).
"""

from __future__ import annotations

import torch


def cuts_to_prompt_length(model: torch.nn.Module) -> bool:
    """Whether :func:`encode_tokens` may cut ``model``'s text context (a causal, argmax-pooled CLIP)."""
    attn_mask = getattr(model, "attn_mask", None)
    return (getattr(model, "text_pool_type", None) == "argmax" and hasattr(model, "token_embedding")
            and isinstance(attn_mask, torch.Tensor)
            and attn_mask.shape[-1] == getattr(model, "positional_embedding", attn_mask).shape[0])


def encode_tokens(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """(B, D) text features (not normalised) of (B, context) token ids, as ``model.encode_text(tokens)``."""
    if not cuts_to_prompt_length(model) or tokens.numel() == 0:
        return model.encode_text(tokens)
    length = int(tokens.argmax(dim=-1).max()) + 1        # end-of-text is the highest id of each prompt
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)[torch.arange(len(tokens), device=x.device), tokens.argmax(dim=-1)]   # (B, width)
    if model.text_projection is None:
        return x
    return model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection
