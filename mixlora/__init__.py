"""MixLoRA: conditional mixture of rank-one LoRA factors (Shen et al., ACL 2024).

Public API: adapter layers, the routing context, injection and adapter checkpoints.
"""
