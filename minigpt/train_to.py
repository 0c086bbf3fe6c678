"""``minigpt bench --train-to LOSS``: time to quality, minigpt against PyTorch eager.

Both train the same model on the same text with the same recipe until the
validation loss reaches LOSS (or the step limit): the same initial weights
(minigpt's initialisation, copied into the PyTorch model), the same batches
in the same order (one NumPy generator per run, same seed), the same AdamW
settings (weight decay on matrices and embeddings only), warm-up + cosine
schedule and gradient clipping, no dropout. Validation every `eval_every`
steps on the same windows; it is not counted in the training time.

A speed-up per step only matters if the steps learn as much; this measures
what a user waits for. Both runs do the same arithmetic up to float32
rounding, so they should reach the target within an evaluation of each other;
the table says at which step each did.
"""
from __future__ import annotations

import time

import numpy as np

EVAL_WINDOWS = 32  # windows per validation batch


def _setup(preset_name, text, block_size, batch_size):
    from .config import preset
    from .data import Dataset, load_corpus
    from .tokenizer import CharTokenizer

    corpus, source = load_corpus(text)
    tok = CharTokenizer.from_text(corpus)
    cfg, tcfg = preset(preset_name, tok.vocab_size, block_size=block_size, batch_size=batch_size, dropout=0.0)
    return cfg, tcfg, Dataset.from_text(corpus, tok, cfg.block_size), source


def _run(step_fn, val_fn, ds, tcfg, target, max_steps, eval_every):
    """Train with step_fn(x, y, lr) until val_fn() <= target. Returns (steps, seconds, val, reached)."""
    from .optim import lr_schedule

    rng = np.random.default_rng(tcfg.seed)
    seconds, val = 0.0, float("nan")
    for step in range(max_steps):
        x, y = ds.get_batch("train", tcfg.batch_size, rng)
        lr = lr_schedule(step, tcfg.lr, tcfg.min_lr, tcfg.warmup_steps, tcfg.steps)  # the preset's schedule
        t0 = time.perf_counter()
        step_fn(x, y, lr)
        seconds += time.perf_counter() - t0
        if (step + 1) % eval_every == 0 or step + 1 == max_steps:
            val = val_fn()
            if val <= target:
                return step + 1, seconds, val, True
    return max_steps, seconds, val, False


def _minigpt(cfg, tcfg, ds, eval_batches):
    """(step_fn, val_fn) of minigpt with the numba kernels."""
    from .model import GPT
    from .optim import AdamW, clip_grad_norm
    from .train import evaluate

    model = GPT(cfg, seed=tcfg.seed, backend="numba")
    opt = AdamW(model.params, lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2), eps=tcfg.eps,
                weight_decay=tcfg.weight_decay)

    def step(x, y, lr):
        model.forward(x, y)
        grads = model.backward()
        clip_grad_norm(grads, tcfg.grad_clip)
        opt.step(grads, lr)

    return step, lambda: evaluate(model, ds, "val", EVAL_WINDOWS, eval_batches)


def copy_into_torch(tm, params, torch):
    """minigpt's parameters into bench._torch_gpt's modules (Linear weights are stored (out, in) there)."""
    names = {"attn.c_attn": "c_attn", "attn.c_proj": "attn_proj", "mlp.c_fc": "c_fc", "mlp.c_proj": "mlp_proj",
             "ln_1": "ln_1", "ln_2": "ln_2"}
    with torch.no_grad():
        tm.wte.weight.copy_(torch.from_numpy(params["wte.weight"]))
        tm.wpe.weight.copy_(torch.from_numpy(params["wpe.weight"]))
        tm.ln_f.weight.copy_(torch.from_numpy(params["ln_f.weight"]))
        tm.ln_f.bias.copy_(torch.from_numpy(params["ln_f.bias"]))
        for i, block in enumerate(tm.h):
            for ours, theirs in names.items():
                module = getattr(block, theirs)
                w = params[f"h.{i}.{ours}.weight"]
                module.weight.copy_(torch.from_numpy(w.T.copy() if w.ndim == 2 else w))  # (in, out) -> (out, in)
                module.bias.copy_(torch.from_numpy(params[f"h.{i}.{ours}.bias"]))


def _torch(tm, tcfg, ds, eval_batches):
    """(step_fn, val_fn) of the same model (tm, a fresh PyTorch module) and recipe in PyTorch eager."""
    import torch

    from .model import init_params

    copy_into_torch(tm, init_params(tm.config, seed=tcfg.seed), torch)
    decay = [p for p in tm.parameters() if p.ndim >= 2]  # as minigpt.optim.decays
    rest = [p for p in tm.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tcfg.weight_decay},
                             {"params": rest, "weight_decay": 0.0}],
                            lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2), eps=tcfg.eps)

    def step(x, y, lr):
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        tm(torch.from_numpy(x), torch.from_numpy(y)).backward()
        torch.nn.utils.clip_grad_norm_(tm.parameters(), tcfg.grad_clip)
        opt.step()

    def val():
        total, count = 0.0, 0
        with torch.no_grad():
            for x, y in ds.iter_eval_batches("val", EVAL_WINDOWS, eval_batches):
                total += float(tm(torch.from_numpy(x), torch.from_numpy(y))) * y.size
                count += y.size
        return total / count

    return step, val


def run_train_to(target, torch_model=None, preset_name="tiny", text=None, block_size=None, batch_size=None,
                 max_steps=None, eval_every=50, eval_batches=8):
    """Train until val loss <= target: ({impl: (steps, seconds, val, reached)}, what was run).

    torch_model(cfg) builds the PyTorch model (minigpt.bench's); None runs minigpt alone.
    """
    cfg, tcfg, ds, source = _setup(preset_name, text, block_size, batch_size)
    max_steps = max_steps or tcfg.steps
    runs = {"minigpt numba": _minigpt(cfg, tcfg, ds, eval_batches)}
    if torch_model is not None:
        runs["torch eager"] = _torch(torch_model(cfg), tcfg, ds, eval_batches)
    results = {name: _run(step, val, ds, tcfg, target, max_steps, eval_every) for name, (step, val) in runs.items()}
    B, T = tcfg.batch_size, cfg.block_size
    about = (f"val loss <= {target} on {source}; preset {preset_name} ({cfg.n_layer}L {cfg.n_embd}w T={T} B={B}), "
             f"validation every {eval_every} steps on {eval_batches} x {EVAL_WINDOWS} windows, not timed")
    return results, {"about": about, "tokens_per_step": B * T}
