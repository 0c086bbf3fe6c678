"""The model as parts: the block pair, backward from any dlogits, activations,
per-layer shapes (pruned heads and MLP neurons), head gates, the op table.

Gradient checks are float64 with the relative error of a tensor below 1e-6:
centered differences with h = 1e-5 are accurate to ~1e-10 here (truncation
h^2, rounding eps |L| / h), so only a wrong derivative reaches 1e-6.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minigpt import GPT, CheckpointError, GPTConfig, load_checkpoint
from minigpt.gradcheck import check_op, numerical_gradient, relative_error
from minigpt.layers.block import block_backward, block_forward
from minigpt.layers.head_gate import head_gate_backward, head_gate_forward
from minigpt.model import add_head_gates, fold_head_gates, is_uniform, layer_shapes
from minigpt.ops import BACKENDS, kernel_pairs, op_table

FD_TOL = 1e-6
CFG = GPTConfig(vocab_size=13, block_size=9, n_layer=2, n_head=4, n_embd=16, dtype="float64")  # head size 4


def perturbed(model, seed=1, noise=0.1):
    """Push parameters away from init (zero biases and unit gains hide mistakes)."""
    rng = np.random.default_rng(seed)
    for p in model.params.values():
        p += noise * rng.standard_normal(p.shape)
    return model


def batch(cfg, B=2, T=7, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, cfg.vocab_size, (B, T)), rng.integers(0, cfg.vocab_size, (B, T))


def pruned_params(model, layer, keep_heads=None, keep_neurons=None):
    """The params with only some heads / MLP neurons of one layer kept, by slicing
    c_attn's q, k, v column blocks and c_proj's rows (what structured pruning does)."""
    P, D, C = dict(model.params), model.config.head_size, model.config.n_embd
    h = f"h.{layer}."
    if keep_heads is not None:
        H = model.layer_shapes()[layer][0]
        cols = np.concatenate([part * H * D + np.arange(k * D, (k + 1) * D)
                               for part in range(3) for k in keep_heads]) if keep_heads else np.zeros(0, int)
        rows = np.concatenate([np.arange(k * D, (k + 1) * D) for k in keep_heads]) if keep_heads else np.zeros(0, int)
        P[h + "attn.c_attn.weight"] = P[h + "attn.c_attn.weight"][:, cols].copy()
        P[h + "attn.c_attn.bias"] = P[h + "attn.c_attn.bias"][cols].copy()
        P[h + "attn.c_proj.weight"] = P[h + "attn.c_proj.weight"][rows].copy()
        if h + "attn.head_gate" in P:
            P[h + "attn.head_gate"] = P[h + "attn.head_gate"][list(keep_heads)].copy()
    if keep_neurons is not None:
        P[h + "mlp.c_fc.weight"] = P[h + "mlp.c_fc.weight"][:, keep_neurons].copy()
        P[h + "mlp.c_fc.bias"] = P[h + "mlp.c_fc.bias"][keep_neurons].copy()
        P[h + "mlp.c_proj.weight"] = P[h + "mlp.c_proj.weight"][keep_neurons].copy()
    return P


def nonuniform_model(backend="numpy"):
    """Layer 0 keeps heads 0, 2, 3 of 4; layer 1's MLP is 2C wide instead of 4C."""
    full = perturbed(GPT(CFG, seed=0, backend=backend))
    P = pruned_params(full, 0, keep_heads=[0, 2, 3])
    P = pruned_params(GPT(CFG, params=P, backend=backend), 1, keep_neurons=np.arange(0, 64, 2))
    return GPT(CFG, params=P, backend=backend)


def fd_check_model(model, loss_fn, rng, k=10):
    """Analytic gradients (from loss_fn's (loss, dlogits)) vs finite differences,
    k random entries per tensor (all of a small one)."""
    idx, _ = batch(model.config)

    def loss():
        logits, _ = model.forward(idx, keep_cache=True)
        return loss_fn(logits)[0]

    logits, _ = model.forward(idx, keep_cache=True)
    grads = model.backward(loss_fn(logits)[1])
    errors = {}
    for name, p in model.params.items():
        pick = np.arange(p.size) if p.size <= 24 else rng.choice(p.size, k, replace=False)
        num = numerical_gradient(loss, p, indices=pick)
        errors[name] = relative_error(grads[name].reshape(-1)[pick], num.reshape(-1)[pick])
    return errors


# ------------------------------------------------------------------ the block
@pytest.mark.parametrize("backend", BACKENDS)
def test_model_forward_and_backward_are_its_blocks(backend):
    model = perturbed(GPT(CFG, seed=0, backend=backend))
    idx, tgt = batch(CFG)
    logits, _ = model.forward(idx, tgt)
    grads = model.backward()
    # redo the model by hand with the block pair
    P, ops = model.params, op_table(backend)
    x = P["wte.weight"][idx] + P["wpe.weight"][: idx.shape[1]]  # (B, T, C)
    caches = []
    for i in range(CFG.n_layer):
        x, c = block_forward(x, model.block_params(i), CFG.head_size, ops)
        caches.append(c)
    acts = model.activations(idx)
    np.testing.assert_array_equal(x, acts[f"h.{CFG.n_layer - 1}"])  # same ops, same order: bit for bit
    dx = np.random.default_rng(3).standard_normal(x.shape)
    for i in reversed(range(CFG.n_layer)):
        dx, g = block_backward(dx, caches[i])
        assert set(g) == set(model.block_params(i))
        assert all(g[k].shape == model.block_params(i)[k].shape for k in g)
    assert logits.shape == (2, 7, CFG.vocab_size) and set(grads) == set(model.params)


def test_block_pair_against_finite_differences():
    model = perturbed(GPT(CFG, seed=0, backend="numpy"))
    add_head_gates(model.params, CFG)
    model.params["h.0.attn.head_gate"][:] = [0.5, 1.5, -0.7, 1.0]
    p = model.block_params(0)
    x = np.random.default_rng(2).standard_normal((2, 5, CFG.n_embd))
    w = np.random.default_rng(4).standard_normal((2, 5, CFG.n_embd))

    def loss():
        return float(np.sum(block_forward(x, p, CFG.head_size)[0] * w))

    _, cache = block_forward(x, p, CFG.head_size)
    dx, g = block_backward(w, cache)
    assert relative_error(dx, numerical_gradient(loss, x)) < FD_TOL
    for name, a in p.items():
        assert relative_error(g[name], numerical_gradient(loss, a)) < FD_TOL, name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_block_leaves_its_inputs_and_caches_alone(backend, dropout):
    # the residual sums are written over the branch's fresh array (layers.block._residual), never over x or dout
    model = perturbed(GPT(CFG, seed=0, backend="numpy"))
    p, ops = model.block_params(0), op_table(backend)
    x = np.random.default_rng(2).standard_normal((2, 5, CFG.n_embd))
    dout = np.random.default_rng(4).standard_normal(x.shape)
    x0, dout0 = x.copy(), dout.copy()
    run = lambda: block_forward(x, p, CFG.head_size, ops, dropout, np.random.default_rng(1), training=True)  # noqa: E731
    out, cache = run()
    keep = {k: v.copy() for k, v in cache.items() if isinstance(v, np.ndarray)}
    dx, g = block_backward(dout, cache)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(dout, dout0)
    assert all(np.array_equal(cache[k], v) for k, v in keep.items())
    out2, cache2 = run()
    np.testing.assert_array_equal(out2, out)
    np.testing.assert_array_equal(block_backward(dout, cache2)[0], dx)


# --------------------------------------------------------- backward(dlogits)
def test_backward_from_a_non_cross_entropy_loss():
    """L = sum(w * softmax(logits)^2) / 2, a loss that is not cross-entropy:
    dL/dlogits = p * (u - sum(p * u)), u = w * p (softmax's Jacobian applied to u)."""
    model = perturbed(GPT(CFG, seed=0, backend="numpy"))
    w = np.random.default_rng(5).standard_normal((2, 7, CFG.vocab_size))

    def loss_fn(logits):
        z = logits - logits.max(-1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
        u = w * p
        return float(0.5 * np.sum(w * p * p)), p * (u - (p * u).sum(-1, keepdims=True))

    errors = fd_check_model(model, loss_fn, np.random.default_rng(0))
    assert max(errors.values()) < FD_TOL, errors


def test_backward_none_is_cross_entropy():
    model = perturbed(GPT(CFG, seed=0, backend="numpy"))
    idx, tgt = batch(CFG)
    logits, _ = model.forward(idx, tgt)
    g_ce = model.backward()
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    p[np.arange(2)[:, None], np.arange(7)[None, :], tgt] -= 1.0  # dCE/dlogits = (p - onehot) / N
    g = model.backward(p / tgt.size)
    for name in g:
        np.testing.assert_allclose(g[name], g_ce[name], rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="dlogits has shape"):
        model.backward(np.zeros((2, 7, 3)))


# --------------------------------------------------------------- activations
def test_activations_are_the_inputs_of_each_linear_layer():
    model = perturbed(GPT(CFG, seed=0))
    idx, tgt = batch(CFG)
    acts = model.activations(idx)
    names = {f"h.{i}.{n}" for i in range(CFG.n_layer)
             for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert names | {"h.0", "h.1", "lm_head"} == set(acts)
    # c_fc's input is ln_2 of the residual stream after the attention branch, so
    # feeding it through c_fc, GELU and c_proj and adding the stream gives the block's output
    P = model.params
    from minigpt.layers.gelu import gelu_forward

    hidden = gelu_forward(acts["h.1.mlp.c_fc"] @ P["h.1.mlp.c_fc.weight"] + P["h.1.mlp.c_fc.bias"])[0]
    np.testing.assert_allclose(hidden, acts["h.1.mlp.c_proj"], rtol=1e-5, atol=1e-6)
    logits, _ = model.forward(idx)
    np.testing.assert_allclose(acts["lm_head"] @ P["wte.weight"].T, logits, rtol=1e-5, atol=1e-6)
    assert acts["h.1"].shape == (2, 7, CFG.n_embd)
    # without idx: the last training forward's, before backward
    model.forward(idx, tgt)
    again = model.activations()
    np.testing.assert_allclose(again["h.0.attn.c_attn"], acts["h.0.attn.c_attn"], rtol=1e-6, atol=1e-7)
    model.backward()


# ----------------------------------------------------- per-layer shapes, gates
def test_head_gate_pair():
    rng = np.random.default_rng(0)
    y, g = rng.standard_normal((2, 3, 12)), rng.standard_normal(3)  # 3 heads of size 4
    out, _ = head_gate_forward(y, g)
    np.testing.assert_array_equal(out, y * np.repeat(g, 4))  # the docstring's formula
    assert max(check_op(head_gate_forward, head_gate_backward, [y, g])) < FD_TOL


def test_gated_off_head_equals_the_head_removed():
    model = perturbed(GPT(CFG, seed=0, backend="numpy"))
    add_head_gates(model.params, CFG)
    model.params["h.0.attn.head_gate"][1] = 0.0
    idx, _ = batch(CFG)
    gated, _ = model.forward(idx)
    removed = GPT(CFG, params=pruned_params(model, 0, keep_heads=[0, 2, 3]), backend="numpy")
    assert removed.layer_shapes() == [(3, 64), (4, 64)]
    logits, _ = removed.forward(idx)
    np.testing.assert_allclose(logits, gated, rtol=0, atol=1e-12)  # float64: rounding only
    # gradient of every gate: exact against finite differences
    errors = fd_check_model(model, lambda lg: (float(np.sum(lg ** 2)) / 2, lg), np.random.default_rng(1))
    assert errors["h.0.attn.head_gate"] < FD_TOL and errors["h.1.attn.head_gate"] < FD_TOL
    # folding the gates into c_proj gives the same function without gates
    folded = GPT(CFG, params=fold_head_gates(model.params, CFG), backend="numpy")
    np.testing.assert_allclose(folded.forward(idx)[0], gated, rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nonuniform_model_forward_backward_generate(backend):
    model = nonuniform_model(backend)
    assert model.layer_shapes() == [(3, 64), (4, 32)] and not is_uniform(model.params, CFG)
    if backend == "numpy":
        errors = fd_check_model(model, lambda lg: (float(np.sum(lg ** 2)) / 2, lg), np.random.default_rng(2))
        assert max(errors.values()) < FD_TOL, errors
    with_cache = model.generate([1, 2, 3], 12, temperature=0)
    without = model.generate([1, 2, 3], 12, temperature=0, use_kv_cache=False)
    np.testing.assert_array_equal(with_cache, without)


def test_layer_with_every_head_removed():
    model = GPT(CFG, params=pruned_params(perturbed(GPT(CFG, seed=0)), 1, keep_heads=[]), backend="numpy")
    assert model.layer_shapes()[1] == (0, 64)
    errors = fd_check_model(model, lambda lg: (float(np.sum(lg ** 2)) / 2, lg), np.random.default_rng(3))
    assert max(errors.values()) < FD_TOL
    np.testing.assert_array_equal(model.generate([1, 2], 10, temperature=0),
                                  model.generate([1, 2], 10, temperature=0, use_kv_cache=False))


def test_nonuniform_model_saves_loads_and_refuses_hf_export(tmp_path):
    from minigpt.hf import export_hf

    model = nonuniform_model()
    add_head_gates(model.params, CFG)
    model.save(tmp_path / "m.npz")
    loaded = load_checkpoint(tmp_path / "m.npz", backend="numpy").model
    assert loaded.layer_shapes() == model.layer_shapes()
    idx, _ = batch(CFG)
    np.testing.assert_array_equal(loaded.forward(idx)[0], model.forward(idx)[0])
    with pytest.raises(CheckpointError, match="one n_head .* h.0: 3 heads.*h.1: 4 heads, MLP 32 wide"):
        export_hf(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_inconsistent_layer_is_named_on_load(tmp_path):
    model = nonuniform_model()
    P = dict(model.params)
    P["h.0.attn.c_proj.weight"] = np.zeros((16, 16))  # c_attn says 3 heads (12 rows)
    GPT(CFG, seed=0).save(tmp_path / "ok.npz")
    bad = GPT.__new__(GPT)
    bad.config, bad.params, bad.tokenizer, bad.rng = CFG, P, None, np.random.default_rng(0)
    from minigpt.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "bad.npz", bad)
    with pytest.raises(CheckpointError, match=r"h.0.attn.c_proj.weight has shape \(16, 16\).*needs \(12, 16\)"):
        load_checkpoint(tmp_path / "bad.npz")


def test_export_of_a_uniform_gated_model_folds_the_gates(tmp_path):
    from minigpt.hf import export_hf, import_hf

    model = perturbed(GPT(CFG, seed=0, backend="numpy"))
    add_head_gates(model.params, CFG)
    model.params["h.1.attn.head_gate"][:] = [1.0, 0.0, 0.5, 2.0]
    export_hf(model, tmp_path / "hf")
    back, _ = import_hf(tmp_path / "hf", backend="numpy")
    assert not any(k.endswith("head_gate") for k in back.params)
    idx, _ = batch(CFG)
    np.testing.assert_allclose(back.forward(idx)[0], model.forward(idx)[0], rtol=0, atol=1e-12)


# ------------------------------------------------------------------- op table
def test_op_table_lists_every_backend_and_kernel_without_special_imports():
    code = ("from minigpt.ops import BACKENDS, kernel_pairs; "
            "print(sorted(BACKENDS)); print(sorted(op for _, op, _ in kernel_pairs()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["['numba', 'numpy']", "['attention', 'gelu', 'layernorm', 'linear']"]
    assert op_table("numpy") is op_table("numpy")  # built once, never mutated by imports
    assert {op for _, op, _ in kernel_pairs()} == {"attention", "gelu", "layernorm", "linear"}


def _modules():
    root = Path(__file__).resolve().parent.parent / "minigpt"
    mods = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        mods.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return mods


def test_every_module_imports_alone_in_a_fresh_interpreter():
    # one interpreter per module, so none leans on another having been imported first
    from concurrent.futures import ThreadPoolExecutor

    def import_alone(mod):
        r = subprocess.run([sys.executable, "-c", f"import {mod}"], capture_output=True, text=True)
        return f"{mod}: {r.stderr.strip().splitlines()[-1]}" if r.returncode else None

    mods = [m for m in _modules() if not m.endswith("__main__")]  # importing __main__ runs the command
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # the interpreters start side by side
        failures = [f for f in pool.map(import_alone, mods) if f]
    assert not failures


def _import_graph():
    """{module: set of minigpt modules it imports}, imports inside functions included."""
    import ast

    root = Path(__file__).resolve().parent.parent
    mods = set(_modules())
    graph = {}
    for mod in mods:
        is_pkg = (root / Path(*mod.split("."), "__init__.py")).exists()
        path = root / Path(*mod.split("."), "__init__.py") if is_pkg else root / (mod.replace(".", "/") + ".py")
        package = mod if is_pkg else mod.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                subs = [f"{base}.{a.name}" for a in node.names]
                # "from . import kernels" imports the submodule, not the package's own names
                names = subs if all(m in mods for m in subs) else [base] + subs
            else:
                continue
            for name in names:
                while name and name not in mods:  # "minigpt.layers.block.x" -> the module holding it
                    name = name.rpartition(".")[0]
                if name and name != mod:
                    deps.add(name)
        graph[mod] = deps
    return graph


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_and_kernels_import_nothing_above_them():
    graph = _import_graph()
    assert _cycles(graph) == []
    kernel_deps = {d for m, deps in graph.items() if m.startswith("minigpt.kernels") for d in deps}
    assert all(d.startswith("minigpt.kernels") for d in kernel_deps), kernel_deps
    # the checker can fail: a planted cycle is found
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


# ------------------------------------------------------------ quantized models
def test_quantized_model_trains_its_float_parts_and_evaluates_the_same_after_loading(tmp_path):
    from minigpt import CharTokenizer, Dataset
    from minigpt.quant import quantize_model
    from minigpt.train import evaluate

    text = "def f(x):\n    return x + 1\n" * 40
    tok = CharTokenizer.from_text(text)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=32)
    model = quantize_model(perturbed(GPT(cfg, seed=0, tokenizer=tok)), "int4", group=16)
    ds = Dataset.from_text(text, tok, cfg.block_size)
    idx, tgt = batch(cfg)
    model.forward(idx, tgt)
    grads = model.backward()  # the LayerNorms, biases and embeddings; integer weights are frozen
    frozen = (".int4", ".scales", ".group")  # an integer weight and its scales are frozen
    assert set(grads) == {k for k in model.params if not k.endswith(frozen)}
    loss = evaluate(model, ds, "val", batch_size=4, max_batches=2)
    model.save(tmp_path / "q.npz")
    back = load_checkpoint(tmp_path / "q.npz").model
    assert evaluate(back, ds, "val", batch_size=4, max_batches=2) == loss


def test_checkpoint_writer_refuses_what_is_not_a_plain_array(tmp_path):
    from minigpt.checkpoint import save_checkpoint

    model = GPT(CFG, seed=0)
    model.params["h.0.attn.c_proj.weight"] = object()
    with pytest.raises(CheckpointError, match="cannot save parameter h.0.attn.c_proj.weight: it is a object"):
        save_checkpoint(tmp_path / "x.npz", model)
    assert not (tmp_path / "x.npz").exists()
