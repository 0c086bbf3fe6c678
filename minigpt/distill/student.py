"""Students: a smaller GPT built from a teacher, initialised from it where
the shapes allow (or at random).

Shape: the student keeps the teacher's vocabulary and context (they share
the tokenizer, and the loss compares logits over the same V), and takes
n_layer, n_embd and n_head of its own.

Initialisation from the teacher (DistilBERT's recipe, generalised):
- layers: student block i starts as teacher block layer_map(L_t, L_s)[i] =
  floor(i L_t / L_s), every other one when L_t = 2 L_s (0, 2, 4, ...);
- the embeddings (wte, wpe) and the final LayerNorm are copied;
- narrower (C_s < C_t): every width axis takes its first C_s entries (a
  slice; the model has no preferred order, so the first ones are as good as
  any and keep the copy exact). Attention keeps heads 0..H_s-1 and, in each,
  its first D_s = C_s / H_s dimensions, in each of q, k and v; the MLP keeps
  its first 4 C_s neurons.
A block tensor that cannot be sliced (more heads, or a wider head, or a
wider MLP than the teacher's block has) keeps its random initialisation, and
the report says so; a student wider or deeper than its teacher cannot be
initialised from it at all.
"""
from __future__ import annotations

import numpy as np

from ..config import GPTConfig
from ..model import GPT, init_params, layer_shapes, param_shapes
from .errors import DistillError

INITS = ("teacher", "random")


def student_config(teacher: GPTConfig, n_layer=None, n_embd=None, n_head=None) -> GPTConfig:
    """The teacher's config with the student's shape (None keeps the teacher's);
    a DistillError names an impossible combination."""
    changes = {"n_layer": n_layer or teacher.n_layer, "n_embd": n_embd or teacher.n_embd,
               "n_head": n_head or teacher.n_head}
    for name, v in changes.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise DistillError(f"the student's {name} must be a positive integer, got {v!r}")
    if changes["n_embd"] % changes["n_head"]:
        raise DistillError(f"the student's n_embd={changes['n_embd']} is not divisible by its "
                           f"n_head={changes['n_head']}")
    return teacher.replace(**changes)


def layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """The teacher block each student block starts from: floor(i L_t / L_s)."""
    return [i * teacher_layers // student_layers for i in range(student_layers)]


def _check_float_teacher(params, cfg):
    expected = param_shapes(cfg, layer_shapes(params, cfg))
    if set(params) != set(expected) or any(not np.issubdtype(params[k].dtype, np.floating) for k in params):
        odd = sorted(set(params) ^ set(expected)) or [k for k in params
                                                      if not np.issubdtype(params[k].dtype, np.floating)]
        raise DistillError(f"the teacher's weights are not all float matrices (e.g. {odd[0]}); "
                           f"initialise from a float checkpoint, before quantizing or storing as CSR")


def _qkv_columns(H_t, D_t, H_s, D_s) -> np.ndarray:
    """c_attn columns of heads 0..H_s-1, dims 0..D_s-1, in each of q, k, v."""
    part = np.arange(3)[:, None, None] * H_t * D_t
    head = np.arange(H_s)[None, :, None] * D_t
    dim = np.arange(D_s)[None, None, :]
    return (part + head + dim).reshape(-1)  # (3 H_s D_s,) in the student's q|k|v, head, dim order


def _head_rows(H_t, D_t, H_s, D_s) -> np.ndarray:
    """attn.c_proj rows of heads 0..H_s-1, dims 0..D_s-1."""
    return (np.arange(H_s)[:, None] * D_t + np.arange(D_s)[None, :]).reshape(-1)  # (H_s D_s,)


def _block_slices(tshape, cfg_t: GPTConfig, cfg_s: GPTConfig):
    """{name in block: index tuple into the teacher's tensor} for the tensors
    that can be sliced, given the teacher block's (H_t, F_t)."""
    H_t, F_t = tshape
    C, D_t, H_s, D_s, F_s = cfg_s.n_embd, cfg_t.head_size, cfg_s.n_head, cfg_s.head_size, 4 * cfg_s.n_embd
    c = slice(0, C)
    out = {n: (c,) for n in ("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias",
                             "attn.c_proj.bias", "mlp.c_proj.bias")}
    if H_s <= H_t and D_s <= D_t:
        cols, rows = _qkv_columns(H_t, D_t, H_s, D_s), _head_rows(H_t, D_t, H_s, D_s)
        out.update({"attn.c_attn.weight": (c, cols), "attn.c_attn.bias": (cols,),
                    "attn.c_proj.weight": (rows, c)})
    if F_s <= F_t:
        f = slice(0, F_s)
        out.update({"mlp.c_fc.weight": (c, f), "mlp.c_fc.bias": (f,), "mlp.c_proj.weight": (f, c)})
    return out


def init_student(teacher_params: dict, teacher_cfg: GPTConfig, cfg: GPTConfig, init="teacher", seed=0):
    """(params, report): the student's parameters and {student tensor: where
    it came from} ("h.2.attn.c_attn.weight[slice]", or "random").

    init "random": GPT-2's initialisation (minigpt.model.init_params) with seed.
    init "teacher": the module docstring's recipe; tensors it cannot slice
    stay as "random" gives them.
    """
    if init not in INITS:
        raise DistillError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    if (cfg.vocab_size, cfg.block_size) != (teacher_cfg.vocab_size, teacher_cfg.block_size):
        raise DistillError(f"the student's vocabulary/context ({cfg.vocab_size}, {cfg.block_size}) differ from "
                           f"the teacher's ({teacher_cfg.vocab_size}, {teacher_cfg.block_size})")
    params = init_params(cfg, seed)
    report = dict.fromkeys(params, "random")
    if init == "random":
        return params, report
    if cfg.n_layer > teacher_cfg.n_layer or cfg.n_embd > teacher_cfg.n_embd:
        raise DistillError(f"a student with {cfg.n_layer} layers of width {cfg.n_embd} cannot start from a teacher "
                           f"with {teacher_cfg.n_layer} of width {teacher_cfg.n_embd} (use init random)")
    _check_float_teacher(teacher_params, teacher_cfg)
    c = slice(0, cfg.n_embd)
    copies = {"wte.weight": ("wte.weight", (slice(None), c)), "wpe.weight": ("wpe.weight", (slice(None), c)),
              "ln_f.weight": ("ln_f.weight", (c,)), "ln_f.bias": ("ln_f.bias", (c,))}
    tshapes = layer_shapes(teacher_params, teacher_cfg)
    for i, j in enumerate(layer_map(teacher_cfg.n_layer, cfg.n_layer)):
        for name, index in _block_slices(tshapes[j], teacher_cfg, cfg).items():
            copies[f"h.{i}.{name}"] = (f"h.{j}.{name}", index)
    narrower = cfg.n_embd < teacher_cfg.n_embd
    for name, (src, index) in copies.items():
        w = teacher_params[src][index]
        if w.shape != params[name].shape:  # a bug in the slices, not the user's input
            raise AssertionError(f"{name}: slice of {src} has shape {w.shape}, want {params[name].shape}")
        params[name] = np.array(w, dtype=cfg.dtype)  # a copy: training the student leaves the teacher alone
        sliced = narrower or w.shape != teacher_params[src].shape
        report[name] = src + ("[slice]" if sliced else "")
    return params, report


def make_student(teacher: GPT, n_layer=None, n_embd=None, n_head=None, init="teacher", seed=0, backend=None):
    """(student GPT, report): student_config + init_student, sharing the teacher's tokenizer."""
    cfg = student_config(teacher.config, n_layer, n_embd, n_head)
    params, report = init_student(teacher.params, teacher.config, cfg, init, seed)
    student = GPT(cfg, seed=seed, params=params, backend=backend or teacher.backend, tokenizer=teacher.tokenizer)
    return student, report


def summarize(report: dict) -> str:
    """One line: how many tensors were copied whole, sliced, or left random."""
    whole = sum(1 for v in report.values() if v != "random" and not v.endswith("[slice]"))
    sliced = sum(1 for v in report.values() if v.endswith("[slice]"))
    rand = sum(1 for v in report.values() if v == "random")
    return f"{whole} tensors copied, {sliced} sliced, {rand} random"
