"""Sparse storage of a pruned model: its zeroed matrices as CSR arrays.

    sparse = to_sparse(model.params)          # every block linear that CSR stores in fewer bytes
    sparse = to_sparse(model.params, 0.8)     # ... or those at least 80% zeros
    smodel = sparse_model(model)              # the same GPT; its forward runs the sparse kernel
    smodel.save("pruned.npz")                 # compact on disk; loads back as it was
    dense = to_dense(sparse)                  # the exact dense weights again

The format (CSR by output column, and why not a bitmask) is in
minigpt.layers.sparse_linear; the product is the op table's "sparse_matmul"
(a NumPy reference, and the numba kernel of minigpt.kernels.sparse). Only
the four linear matrices of each block can be sparse: the embeddings are
also the tied output head, which has no sparse path.

Bytes: a dense float32 weight takes 4 bytes an entry; CSR takes 6 bytes a
nonzero (value + uint16 index) plus 8 an output, so it is the smaller from
about 1/3 sparsity on, which is what to_sparse picks by default. Whether it
is also faster depends on the product (one decoding row or a batch): see
`minigpt bench` and the README.
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..layers.block import LINEARS
from ..layers.sparse_linear import SPARSE_KEYS, csr_from_dense, csr_to_dense


def sparsity_of(w) -> float:
    """The fraction of w's entries that are zero."""
    return 1.0 - np.count_nonzero(w) / w.size if w.size else 0.0


def csr_nbytes(s: dict) -> int:
    """Bytes the CSR arrays of one weight take."""
    return int(sum(s[k[len("csr_"):]].nbytes for k in SPARSE_KEYS))


def sparse_candidates(params: dict) -> list[str]:
    """Names of the dense block-linear weights in params (what can be stored sparse)."""
    return [n for n, p in params.items()
            if n.startswith("h.") and n.endswith(".weight") and n[: -len(".weight")].endswith(LINEARS)
            and p.ndim == 2]


def to_sparse(params: dict, min_sparsity=None, names=None) -> dict:
    """A new parameter dict in which the chosen block-linear weights are CSR arrays.

    min_sparsity None: every weight whose CSR arrays take fewer bytes than
    the dense array (about 1/3 zeros and up); a number in [0, 1]: every
    weight with at least that fraction of zeros. names: the weights to
    consider (default: every block linear's). Other arrays are shared, not
    copied; the order of the dict is kept, CSR arrays in their weight's place.
    """
    if min_sparsity is not None and not 0.0 <= min_sparsity <= 1.0:
        raise ConfigError(f"min_sparsity must lie in [0, 1], got {min_sparsity}")
    candidates = sparse_candidates(params)
    if names is not None:
        unknown = sorted(set(names) - set(candidates))
        if unknown:
            raise ConfigError(f"cannot store {unknown[0]} sparse: only the dense weights of "
                              f"a block's linear layers {list(LINEARS)} can be")
        candidates = list(names)
    out = {}
    for name, p in params.items():
        if name not in candidates:
            out[name] = p
            continue
        s = csr_from_dense(p)
        keep_dense = csr_nbytes(s) >= p.nbytes if min_sparsity is None else sparsity_of(p) < min_sparsity
        if keep_dense:
            out[name] = p
        else:
            out.update({f"{name}.{k}": s[k[len("csr_"):]] for k in SPARSE_KEYS})
    return out


def to_dense(params: dict) -> dict:
    """A new parameter dict with every CSR weight turned back into its dense array
    (exactly: each stored value in its place, zeros elsewhere)."""
    out = {}
    for name, p in params.items():
        if name.endswith(".weight.csr_indptr"):
            w = name[: -len(".csr_indptr")]
            out[w] = csr_to_dense({k[len("csr_"):]: params[f"{w}.{k}"] for k in SPARSE_KEYS})
        elif not name.endswith(tuple(f".weight.{k}" for k in SPARSE_KEYS)):
            out[name] = p
    return out


def sparse_names(params: dict) -> list[str]:
    """The weights stored sparse in params (their dense names)."""
    return [n[: -len(".csr_indptr")] for n in params if n.endswith(".weight.csr_indptr")]


def sparse_model(model, min_sparsity=None, names=None):
    """A new GPT sharing model's config, tokenizer and backend, its weights stored by to_sparse."""
    return type(model)(model.config, params=to_sparse(model.params, min_sparsity, names),
                       backend=model.backend, tokenizer=model.tokenizer)


def dense_model(model):
    """A new GPT with every sparse weight of model dense again (to_dense)."""
    return type(model)(model.config, params=to_dense(model.params), backend=model.backend,
                       tokenizer=model.tokenizer)
