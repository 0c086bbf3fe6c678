"""Language-model head tied to the token embedding (GPT-2 shares wte).

Forward:  logits = x @ wte^T
Shapes:   x (B, T, C), wte (V, C) -> logits (B, T, V)
"""


def lm_head_forward(x, wte):
    logits = x @ wte.T  # (B, T, V)
    return logits, (x, wte)


def lm_head_backward(dlogits, cache):
    """Returns (dx, dwte).

    logits[n, v] = sum_c x[n, c] wte[v, c], so
    dx = dlogits @ wte and dwte = dlogits^T @ x (summed over batch and time).
    The model adds this dwte to the embedding's gradient: one tensor, two uses.
    """
    x, wte = cache
    V, C = wte.shape
    dx = dlogits @ wte  # (B, T, C)
    dwte = dlogits.reshape(-1, V).T @ x.reshape(-1, C)  # (V, C)
    return dx, dwte
