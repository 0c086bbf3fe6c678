"""Pruning: methods that act on the parameter dict and return masks or a
smaller parameter dict.

    from minigpt.prune import magnitude_masks, apply, masked_training_hooks
    masks = magnitude_masks(model.params, 0.5)             # bool, True = alive
    model.params = apply(model.params, masks)              # pruned weights = 0
    train(model, ds, tcfg, masks=masks)                    # fine-tune; they stay 0

Masks are bool arrays with the keys and shapes of the weights they prune
(True = alive). Unstructured: magnitude (per tensor, per output, global),
random, Wanda, N:M, and gradual magnitude pruning with Zhu & Gupta's cubic
schedule; per-matrix sparsities from a sensitivity scan and a loss
budget. Structured: heads and MLP neurons ranked by the gradient of a
gate, removed for real (smaller matrices). One module per idea:
masks.py (names, counting and tie rules), magnitude.py, schedule.py,
wanda.py, nm.py, sensitivity.py, structured.py; sparse.py stores pruned
matrices as CSR; cli.py is `minigpt prune`.
"""
from .magnitude import full_masks, global_masks, magnitude_masks, prune_by_scores, random_masks
from .masks import (
    PruneError,
    alive_by_kind,
    apply,
    masked_training_hooks,
    prunable_names,
    sparsity,
)
from .nm import is_nm, nm_masks, parse_nm
from .schedule import GradualPruning, cubic_sparsity
from .sensitivity import allocate, masks_for, sensitivity_masks, sensitivity_scan, total_sparsity
from .structured import (
    gate_heads,
    gate_neurons,
    head_importance,
    lowest,
    neuron_importance,
    remove_heads,
    remove_neurons,
)
from .wanda import input_norms, wanda_masks, wanda_scores

__all__ = [
    "PruneError", "prunable_names", "apply", "sparsity", "alive_by_kind", "masked_training_hooks",
    "full_masks", "magnitude_masks", "global_masks", "random_masks", "prune_by_scores",
    "GradualPruning", "cubic_sparsity", "input_norms", "wanda_scores", "wanda_masks",
    "nm_masks", "is_nm", "parse_nm",
    "head_importance", "neuron_importance", "lowest", "remove_heads", "remove_neurons",
    "gate_heads", "gate_neurons",
    "sensitivity_scan", "allocate", "sensitivity_masks", "masks_for", "total_sparsity",
]
