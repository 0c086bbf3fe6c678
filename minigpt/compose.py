"""Composing the compression commands (distill, prune, quantize, train --qat).

Each command reads a checkpoint and writes one, so they chain:
``minigpt distill`` -> ``minigpt prune`` (structured, unstructured, with
--finetune-steps) -> ``minigpt quantize`` (RTN, GPTQ) -> ``minigpt train
--resume QCKPT --qat``. Two things make a chain usable:

* provenance: every command appends one line to ``meta["provenance"]``
  (which step made the checkpoint from which file), so ``minigpt eval``
  can say how a model was made;
* refusals: an order that cannot work gets one line saying why and what
  to do instead, before any work. What a checkpoint's weights are stored
  as decides it:

  ========================  =====================================================
  stored as                 what can follow
  ========================  =====================================================
  float (dense or masked)   anything
  CSR (--sparse-storage)    sample / eval / distill --init random only: CSR holds
                            frozen float values, so quantize, prune and training
                            (which update dense arrays) need the dense checkpoint
  int8 / int2-4 / W8A8      sample / eval, train --qat (int8, int2-4 only),
                            distill --init random (a teacher); pruning and a
                            second quantization need float weights
  Q8_0 / Q4_0 / k-means     sample / eval, distill --init random
  ... + int8 head           as its block linears', but no train --qat (QAT
  (quantize --head int8)    trains float block linears; the tied head's
                            int8 rows would need a fake-quantized wte)
  ========================  =====================================================

  Pruning masks end at quantization: the integer formats store every weight
  (zero or not), GPTQ's error updates may move pruned weights off zero, and
  train --qat trains every weight of the dequantized model. Unstructured
  pruning saves bytes only as CSR; structured pruning and distillation
  shrink the matrices themselves, which quantization then keeps.
"""
from __future__ import annotations

from .errors import MinigptError


class ComposeError(MinigptError):
    """A compression step asked for in an order that cannot work."""


def stored_as(params: dict) -> str:
    """'float', 'csr' or the quantized format(s), e.g. 'int4', 'int4+int8' or 'int4+int8 head'."""
    from .layers.quantized_embedding import head_format
    from .prune.sparse import sparse_names
    from .quant.weights import quantized_layers

    kinds = sorted(set(quantized_layers(params).values()))
    if head_format(params):  # the tied embedding / head, opt-in (quantize --head int8)
        kinds.append(f"{head_format(params)} head")
    if kinds:
        return "+".join(kinds)
    return "csr" if sparse_names(params) else "float"


def _source(meta: dict) -> str:
    """The file a checkpoint was made from, if its metadata says."""
    for key, field in (("quantization", "source"), ("pruned", "from"), ("distilled", "teacher")):
        if isinstance(meta.get(key), dict) and meta[key].get(field):
            return str(meta[key][field])
    return ""


def _came_from(meta: dict) -> str:
    src = _source(meta)
    return f" (made from {src})" if src else ""


def check_prunable(path, params: dict, meta: dict) -> None:
    """ComposeError unless pruning can start from these weights."""
    kind = stored_as(params)
    if kind == "csr":
        raise ComposeError(f"{path} stores pruned matrices as CSR (--sparse-storage: frozen, for inference); "
                           f"prune the dense checkpoint it came from{_came_from(meta)}, and store CSR last")
    if kind != "float":
        raise ComposeError(f"{path} holds {kind} weights (quantized): pruning needs float weights; prune the float "
                           f"checkpoint{_came_from(meta)}, then quantize the pruned one")


def check_quantizable(path, params: dict, meta: dict) -> None:
    """ComposeError unless quantization can start from these weights."""
    kind = stored_as(params)
    if kind == "csr":
        raise ComposeError(f"{path} stores pruned matrices as CSR (--sparse-storage), float values quantize cannot "
                           f"round; quantize the dense pruned checkpoint (prune without --sparse-storage)"
                           f"{_came_from(meta)}")
    if kind != "float":
        raise ComposeError(f"{path} is quantized already ({kind}); quantize the float checkpoint it came from"
                           f"{_came_from(meta)}")


def why_not_resumable(path, params: dict) -> str:
    """Why a checkpoint without training state cannot be fine-tuned, by how it is stored ('' if float)."""
    kind = stored_as(params)
    if kind == "csr":
        return (f"{path} stores pruned matrices as CSR (--sparse-storage, an inference checkpoint); fine-tune the "
                f"dense pruned checkpoint, then store CSR")
    if kind.endswith(" head"):  # quantize --head int8: QAT trains no integer embedding
        return (f"{path} holds {kind} weights (an inference checkpoint); fine-tune the float checkpoint before "
                f"quantizing, or quantize it without --head and fine-tune that with --qat")
    if kind != "float":
        extra = " with --qat" if kind in ("int8", "int4") else " before quantizing"
        return f"{path} holds {kind} weights (an inference checkpoint); fine-tune it{extra}"
    return ""


def default_group(params: dict, preferred: int = 32) -> int:
    """The int2-4 group size to use when none is given: `preferred`, or the
    largest even divisor of it that divides every block linear's input width
    (a structurally pruned layer can be narrower than 32 inputs)."""
    from .quant.weights import is_quantizable

    widths = {a.shape[0] for n, a in params.items() if is_quantizable(n)}
    for g in range(preferred, 1, -1):
        if preferred % g == 0 and g % 2 == 0 and all(w % g == 0 for w in widths):
            return g
    raise ComposeError(f"no even group size divides every layer's input width ({sorted(widths)}); "
                       f"quantize with --bits 5 to 8 (one scale a channel) instead")


# ------------------------------------------------------------------ provenance

def lineage(meta: dict, step: int = 0) -> list[str]:
    """The steps that made a checkpoint, oldest first: its meta["provenance"],
    or for a file from before provenance was recorded, what its metadata tells."""
    if meta.get("provenance"):
        return list(meta["provenance"])
    if meta.get("imported_from"):
        return [f"import-hf {meta['imported_from']}"]
    steps = []
    if isinstance(meta.get("distilled"), dict):
        steps.append(f"distill from {meta['distilled'].get('teacher')}")
    if isinstance(meta.get("pruned"), dict):
        steps.append(f"prune {meta['pruned'].get('method')} from {meta['pruned'].get('from')}")
    if isinstance(meta.get("quantization"), dict):
        q = meta["quantization"]
        steps.append(f"quantize {q.get('kind')} {q.get('method', 'rtn')} from {q.get('source')}")
    return steps or [f"train {step} steps"]


def with_step(meta: dict, step: int, what: str) -> list[str]:
    """lineage(meta, step) with one more step appended."""
    return lineage(meta, step) + [what]


def describe_lineage(meta: dict, step: int = 0) -> str:
    return " -> ".join(lineage(meta, step))


# ------------------------------------------------------------------ the frontier

def pareto_front(xs, ys) -> list[int]:
    """Indices of the points (x, y) no other point dominates, both to be made
    small, ordered by x: j dominates i when x_j <= x_i and y_j <= y_i, one of
    them strictly. One sweep in order of (x, y): a point is kept when its y
    is below every y before it, or equals the best y of a point at the same x
    (a duplicate of a kept point dominates nothing). O(n log n)."""
    order = sorted(range(len(xs)), key=lambda i: (xs[i], ys[i]))
    front, best_y, best_x = [], float("inf"), None
    for i in order:
        if ys[i] < best_y:
            front.append(i)
            best_y, best_x = ys[i], xs[i]
        elif ys[i] == best_y and xs[i] == best_x:
            front.append(i)
    return front
