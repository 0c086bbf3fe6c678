"""The error a user gets for an impossible distillation setting."""
from ..errors import MinigptError


class DistillError(MinigptError, ValueError):
    """A bad temperature, alpha, student shape or teacher for distillation."""
