"""The explicit option values of the adapters, validated up front.

Every mode is a string from a fixed tuple, checked where it enters (layer constructors, ``AdapterConfig``),
so a typo fails at build time with the list of valid values instead of silently picking a branch.
"""

ADAPTER_KINDS = ("lora", "mixlora")

# How B's factor choice depends on the chosen A factors (docs/method.md#conditional-factor-selection).
#   none     - Independent Factor Selection only.
#   paper    - p_B += Σ_i softmax_E(A_x[i] · W_AB[i])                      (the paper's equation)
#   released - p_B += softmax_E(Σ_i softmax_E((Σ_d A_x[i,d]) · (Σ_f W_AB[i,f,:])))   (what the code computes)
CFS_MODES = ("none", "paper", "released")

# Whether routers learn (docs/method.md#router-gradients: in the released code they never receive a gradient).
#   none             - selection is an integer top-r; routers stay at initialisation.
#   straight_through - forward unchanged; selected factors are multiplied by s / s.detach() of their scores,
#                      whose gradient reaches the routers and, through the pooled router input h̄, the hidden
#                      states the routers read (and every earlier layer).
#   straight_through_detached - the same multiplier with h̄ detached: the routers learn, and the hidden states
#                      get no gradient through the routing (CFS still passes one to the selected A factors).
ROUTER_GRAD_MODES = ("none", "straight_through", "straight_through_detached")

# Which positions the router averages over.
#   prompt      - masked mean over the tokens the caller marks (system, image, instruction; never padding/answers).
#   instruction - masked mean over the first user turn's instruction only (no system prompt, role tags, image or
#                 answer): the collators' instruction_mask, built from the datasets' instruction spans.
#   all    - plain mean over every position, padding and answer included (released training), except batched
#            generation, which averages each row's real prompt tokens (routing context's sequence_mask): the released
#            evaluation ran at batch 1 with no padding.
ROUTING_TOKENS = ("prompt", "instruction", "all")

# In which arithmetic routing decides (mixlora.layers, "Routing numerics").
#   float32 - mean, router logits, softmax, CFS term and top-r in float32 (float64 layers: float64) whatever the
#             layer dtype or autocast; A (and B without CFS) ranks logits, never rounded probabilities. Selection =
#             the float64 selection on the same weights and inputs up to float32 rounding of near-ties.
#   layer   - the released selector's arithmetic: everything in the layer dtype (or what autocast makes of it);
#             top-r of the raw logits (for B with CFS: of softmax(logits_B) + CFS). Equal to the released code in
#             bf16 and fp16 as in fp32.
ROUTING_PRECISIONS = ("float32", "layer")

# How cached decoding routes.
#   prefill  - the selection made on the prompt is reused for every generated token.
#   per_step - each decode forward re-routes on the tokens it is given (one token with a KV cache; released).
DECODE_ROUTING = ("prefill", "per_step")

# What the routers see (the routing ablation, docs/method.md#routing-sources-the-routing-ablation).
#   instance - the pooled input of the instance itself (MixLoRA).
#   task     - the pooled input of another batch row holding the task's definition text (released `task_def`):
#              `mixlora.routing(model, mask, source_rows=...)` says which row each row routes on.
#   random   - r random factors per instance, redrawn at every full forward (and at every decode step under
#              decode_routing="per_step", as released); routers unused.
ROUTING_SOURCES = ("instance", "task", "random")


def check_choice(name: str, value, choices: tuple) -> str:
    """Return ``value`` if it is one of ``choices``; otherwise raise a ValueError naming both."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not a valid option; choose one of {', '.join(map(repr, choices))}.")
    return value


def check_rank(rank, num_factors) -> None:
    """The one rule for MixLoRA's sizes: 1 <= rank < num_factors (r of E factors selected per instance).

    r = E is refused: every instance would select the whole pool, so routing would only permute the slots and
    (without CFS weighting) the layer would be LoRA of rank E at a higher cost; use ``kind="lora"`` for that.
    """
    if not isinstance(num_factors, int) or isinstance(num_factors, bool) or num_factors <= 0:
        raise ValueError(f"num_factors must be a positive integer for MixLoRA, got {num_factors!r}")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    if rank >= num_factors:
        raise ValueError(f"rank={rank} must be smaller than num_factors={num_factors}: MixLoRA selects r of E "
                         "factors per instance (e.g. num_factors=16, rank=4).")
