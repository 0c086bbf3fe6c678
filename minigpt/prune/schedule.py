"""Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune").

Instead of pruning once and repairing afterwards, the sparsity rises while
the model trains, pruning every dt steps from step t0, n times, along

    s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3,    t = t0, t0 + dt, ..., t0 + n dt

from the initial sparsity s_i to the final s_f. The cube prunes fast while
many redundant weights remain and slowly near the end, when each one left
matters more and training needs time to recover between prunings.
"""
from __future__ import annotations

from ..optim import apply_masks
from .magnitude import full_masks, magnitude_masks
from .masks import PruneError, check_fraction


def cubic_sparsity(t, s_i, s_f, t0, n, dt) -> float:
    """s_t of the cubic schedule; s_i before t0 and s_f after t0 + n dt."""
    if n <= 0 or dt <= 0:
        raise PruneError(f"the schedule needs n >= 1 pruning steps dt >= 1 apart, got n={n}, dt={dt}")
    r = (t - t0) / (n * dt)  # progress through the schedule
    if r <= 0 or r >= 1:  # the endpoints exactly (s_f + (s_i - s_f) can differ from s_i by a rounding)
        return float(s_i if r <= 0 else s_f)
    return s_f + (s_i - s_f) * (1.0 - r) ** 3


class GradualPruning:
    """Training hooks that prune by magnitude along the cubic schedule.

        gp = GradualPruning(model.params, final_sparsity=0.8, t0=0, n=10, dt=20)
        train(model, dataset, tcfg, **gp.hooks())
        gp.masks                     # the final masks (bool, True = alive)

    Passing masks=gp.masks to train() as well saves the masks reached so
    far in every checkpoint (the dict is updated in place).

    Once AdamW's step count (optimizer.t after the update) reaches a step t
    of pruning_steps(), each
    named tensor (scope="tensor"), or all of them together ("global"), is
    pruned by magnitude until round(s_t x size) of it is pruned; between
    prunings the masks hold pruned weights and their moments at 0.
    """

    def __init__(self, params, final_sparsity, t0, n, dt, initial_sparsity=0.0, names=None,
                 scope="tensor", embeddings=False):
        self.s_f = check_fraction(final_sparsity, "final sparsity")
        self.s_i = check_fraction(initial_sparsity, "initial sparsity")
        if self.s_i > self.s_f:
            raise PruneError(f"initial sparsity {self.s_i} exceeds the final {self.s_f}")
        cubic_sparsity(t0, self.s_i, self.s_f, t0, n, dt)  # checks n and dt
        self.t0, self.n, self.dt, self.scope = int(t0), int(n), int(dt), scope
        self.masks = full_masks(params, names, embeddings)
        self.history: list[tuple[int, float]] = []  # (step, sparsity reached)
        self._pending = self.pruning_steps()  # pruning steps not reached yet

    def pruning_steps(self) -> list[int]:
        return [self.t0 + k * self.dt for k in range(self.n + 1)]

    def prune(self, params, t) -> None:
        """Prune params up to s_t (masks only; the hooks zero the weights)."""
        s = cubic_sparsity(t, self.s_i, self.s_f, self.t0, self.n, self.dt)
        # in place: train(..., masks=gp.masks) then holds, and checkpoints save, the current masks
        self.masks.update(magnitude_masks(params, s, list(self.masks), self.masks, self.scope, of="all"))
        self.history.append((t, s))

    def before_step(self, grads) -> None:
        apply_masks(grads, self.masks)

    def after_step(self, params, optimizer) -> None:
        due = [t for t in self._pending if t <= optimizer.t]  # t0 = 0 falls due after the first step
        if due:
            self.prune(params, due[-1])
            self._pending = self._pending[len(due):]
        apply_masks(params, self.masks, optimizer)

    def hooks(self) -> dict:
        return {"before_step": self.before_step, "after_step": self.after_step}
