"""Checks of the pruning assignment: masks against the counting and tie rules
of minigpt.prune (a rule-by-rule reference written here with plain loops),
and head importance against centered differences of the loss in each gate."""
from __future__ import annotations

import numpy as np

from ...prune import magnitude as lib_magnitude
from .common import CheckFailed, compare, compare_exact, fmt


def _smallest_loop(scores, alive, k):
    """Prune, per column, the k[j] alive entries with the smallest score (ties: lower row first)."""
    out = alive.copy()
    for j in range(scores.shape[1]):
        rows = sorted((float(scores[i, j]), i) for i in range(scores.shape[0]) if alive[i, j])
        for _, i in rows[: int(k[j])]:
            out[i, j] = False
    return out


def _tied_scores(rng, shape):
    return rng.integers(0, 4, shape).astype(np.float64)  # few distinct values: ties everywhere


def check_magnitude(hw, rng):
    def counts():
        alive = rng.random((int(rng.integers(3, 12)), int(rng.integers(1, 6)))) < 0.7
        for frac in (0.5, float(rng.uniform(0, 1))):
            got = np.asarray(hw.prune_counts(alive, frac, "alive"))
            want = [int(round(frac * int(a))) for a in alive.sum(0)]
            compare_exact(f"prune_counts(alive {alive.shape}, {frac:.3g}, 'alive')", got, want,
                          [("that rounds half up or down; Python's round is half to even",
                            [int(np.floor(frac * int(a) + 0.5)) for a in alive.sum(0)])])
            n = alive.shape[0]
            want_all = [max(0, int(round(frac * n)) - (n - int(a))) for a in alive.sum(0)]
            compare_exact(f"prune_counts(alive {alive.shape}, {frac:.3g}, 'all')", hw.prune_counts(alive, frac, "all"),
                          want_all)
        return "round half to even, of='alive' and of='all'"

    def smallest():
        n, c = int(rng.integers(3, 10)), int(rng.integers(1, 5))
        scores, alive = _tied_scores(rng, (n, c)), rng.random((n, c)) < 0.75
        k = np.array([int(rng.integers(0, a + 1)) for a in alive.sum(0)])
        got = hw.prune_smallest(scores, alive, k)
        want = _smallest_loop(scores, alive, k)
        dead_counted = np.array([_smallest_loop(scores, np.ones_like(alive), k)[:, j] & alive[:, j]
                                 for j in range(c)]).T
        compare_exact(f"prune_smallest on scores {scores.shape} with ties and dead entries", got, want,
                      [("pruned entries look counted among the k smallest; skip them", dead_counted)])
        return f"{int(k.sum())} pruned of {int(alive.sum())} alive"

    def tensors():
        return {"a": rng.standard_normal((int(rng.integers(2, 7)), int(rng.integers(2, 6)))),
                "b": 3 * rng.standard_normal((int(rng.integers(2, 7)), int(rng.integers(2, 6))))}

    def scoped(scopes):
        lines = []
        for scope in scopes:
            t = tensors()
            scores = {k: np.abs(a) for k, a in t.items()}
            masks = {k: rng.random(a.shape) < 0.8 for k, a in t.items()}
            frac = float(rng.uniform(0.1, 0.9))
            for of in ("alive", "all"):
                got = hw.prune_by_scores(scores, frac, masks, scope, of)
                want = lib_magnitude.prune_by_scores(scores, frac, masks, scope, of)
                others = {s: lib_magnitude.prune_by_scores(scores, frac, masks, s, of)
                          for s in lib_magnitude.SCOPES if s != scope}
                if set(got) != set(want):
                    raise CheckFailed(f"scope {scope!r}: masks for {sorted(got)}, expected {sorted(want)}")
                for name in want:
                    hints = [(f"that is the {s!r} scope's mask", o[name]) for s, o in others.items()]
                    compare_exact(f"scope {scope!r}, of={of!r}, fraction {frac:.3g}: mask {name!r}", got[name],
                                  want[name], hints)
            lines.append(scope)
        return "agrees with the rules for " + ", ".join(lines)

    yield "prune_counts", counts
    yield "prune_smallest", smallest
    yield "tensor and output scopes", lambda: scoped(("tensor", "output"))
    yield "global scope", lambda: scoped(("global",))


def _nm_loop(scores, alive, n, m, dead_count=True):
    """Keep at most n per group of m consecutive inputs (dead_count=False: a known mistake)."""
    K, out = scores.shape
    keep = alive.copy()
    for j in range(out):
        for g0 in range(0, K, m):
            rows = [(float(scores[i, j]), i) for i in range(g0, g0 + m) if alive[i, j]]
            rows.sort()
            for _, i in rows[: max(0, len(rows) - n) if dead_count else m - n]:
                keep[i, j] = False
    return keep


def check_nm(hw, rng):
    def run(dead):
        m = int(rng.choice([2, 4, 8]))
        n = int(rng.integers(1, m))
        K, out = m * int(rng.integers(1, 4)), int(rng.integers(1, 6))
        scores = _tied_scores(rng, (K, out)) if rng.random() < 0.5 else rng.random((K, out))
        alive = rng.random((K, out)) < 0.7 if dead else np.ones((K, out), bool)
        got = hw.nm_group_mask(scores, alive, n, m)
        want = _nm_loop(scores, alive, n, m)
        hints = [(f"that keeps M - N = {m - n} per group; N:M keeps N = {n}", _nm_loop(scores, alive, m - n, m)),
                 (f"that prunes {m - n} alive weights in every group; dead weights count toward the M - N pruned",
                  _nm_loop(scores, alive, n, m, dead_count=False))]
        if m - n != n:
            hints.append(("the groups look like strided rows; a group is M consecutive inputs",
                          _nm_loop(scores.reshape(m, K // m, out).swapaxes(0, 1).reshape(K, out),
                                   alive.reshape(m, K // m, out).swapaxes(0, 1).reshape(K, out), n, m)
                          .reshape(K // m, m, out).swapaxes(0, 1).reshape(K, out)))
        compare_exact(f"{n}:{m} mask of scores {scores.shape}" + (" with dead weights" if dead else ""),
                      got, want, hints)
        return f"{n}:{m} on {scores.shape}"

    yield "all alive", lambda: run(False)
    yield "with dead weights", lambda: run(True)


def _tiny_model(rng):
    from ...config import GPTConfig
    from ...model import GPT

    H = int(rng.integers(2, 4))
    cfg = GPTConfig(vocab_size=int(rng.integers(5, 12)), block_size=6, n_layer=2, n_head=H, n_embd=2 * H,
                    dtype="float64")
    model = GPT(cfg, seed=int(rng.integers(1 << 30)), backend="numpy")
    for k, p in model.params.items():  # larger than the init scale, so heads differ clearly
        p += 0.3 * rng.standard_normal(p.shape)
    batches = [(rng.integers(0, cfg.vocab_size, (1, 5)), rng.integers(0, cfg.vocab_size, (1, 5))) for _ in range(2)]
    return model, batches


def _gate_grads_numeric(model, batches, h=1e-5):
    from ...model import add_head_gates

    cfg, out = model.config, []
    params = add_head_gates({k: v.copy() for k, v in model.params.items()}, cfg)
    from ...model import GPT

    probe = GPT(cfg, params=params, backend="numpy")
    per_batch = []
    for x, y in batches:
        grads = []
        for i in range(cfg.n_layer):
            g = params[f"h.{i}.attn.head_gate"]
            row = np.zeros(g.shape)
            for j in range(g.size):
                g[j] = 1 + h
                lp = probe.forward(x, y)[1]
                g[j] = 1 - h
                lm = probe.forward(x, y)[1]
                g[j] = 1.0
                row[j] = (lp - lm) / (2 * h)
            grads.append(row)
        per_batch.append(grads)
    for i in range(cfg.n_layer):
        out.append(np.stack([b[i] for b in per_batch]))  # (batches, H)
    return out


def check_heads(hw, rng):
    model, batches = _tiny_model(rng)
    before = {k: v.copy() for k, v in model.params.items()}

    def importance():
        got = hw.head_importance(model, batches)
        num = _gate_grads_numeric(model, batches)
        if not isinstance(got, (list, tuple)) or len(got) != len(num):
            raise CheckFailed(f"head_importance must return a list of {len(num)} arrays (one per block)")
        errs = []
        for i, (g, n) in enumerate(zip(got, num)):
            hints = [("that is the mean of the signed dL/dg; importance is the mean of |dL/dg|", n.mean(0)),
                     ("that is |mean of dL/dg|; importance is the mean of |dL/dg| over batches", np.abs(n.mean(0))),
                     ("that is the sum over batches; importance is the mean", np.abs(n).sum(0))]
            errs.append(compare(f"block {i} head importance vs mean over {len(batches)} batches of "
                                f"|centered differences of the loss in each gate|", g, np.abs(n).mean(0), 1e-6, hints))
        return f"{model.config.n_layer} blocks x {model.config.n_head} heads: relative error {fmt(max(errs))}"

    def unchanged():
        hw.head_importance(model, batches)
        if set(model.params) != set(before):
            extra = sorted(set(model.params) ^ set(before))
            raise CheckFailed(f"model.params gained or lost {extra[:2]}; put the gates on a copy and restore")
        for k in before:
            compare_exact(f"model.params[{k!r}] after head_importance", model.params[k], before[k])
        return "parameters and gates as before"

    yield "importance vs centered differences", importance
    yield "model left unchanged", unchanged


CHECKS = {"magnitude": check_magnitude, "nm": check_nm, "heads": check_heads}
