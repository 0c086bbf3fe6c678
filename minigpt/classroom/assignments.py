"""The assignments: which marked library bodies a student writes, in which
parts, for how many points, checked how, and which chapter sections the
handout quotes.

A part's points are the sum of its sub-checks' points; each sub-check is
all or nothing. Points live here (in the installed library), never in the
workspace, so editing a submission's manifest changes no score.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .markers import ClassroomError


@dataclass(frozen=True)
class Part:
    name: str  # short id: "layernorm"
    title: str  # "LayerNorm forward and backward"
    units: tuple[str, ...]  # "module:top-level name" of the marked units
    checks: tuple[tuple[str, int], ...]  # (sub-check name, points), in the order they run
    sections: tuple[str, ...] = ()  # chapter headings (prefixes) the handout quotes for this part
    timeout: float = 30.0  # seconds for the whole part, in its own process

    @property
    def points(self) -> int:
        return sum(p for _, p in self.checks)


@dataclass(frozen=True)
class Assignment:
    name: str
    title: str
    chapter: str  # chapters/NN_topic.py, whose sections the handout quotes
    intro_sections: tuple[str, ...]
    parts: tuple[Part, ...]
    plug: str  # handout code: use the student's functions inside minigpt once they pass
    plug_note: str = ""
    check_module: str = field(default="")

    @property
    def module(self) -> str:
        return f"hw_{self.name}"

    @property
    def points(self) -> int:
        return sum(p.points for p in self.parts)

    def part(self, name: str) -> Part:
        for p in self.parts:
            if p.name == name:
                return p
        raise ClassroomError(f"assignment {self.name} has no part {name!r}; its parts: "
                             + ", ".join(p.name for p in self.parts))

    def units(self) -> list[str]:
        return [u for p in self.parts for u in p.units]


_L = "minigpt.layers."
_TINY_TRAIN = '''
rng = np.random.default_rng(0)
text = "".join(rng.choice(["def ", "return ", "x", "y", " = ", "(", ")", ":\\n", "    ", "1", "+"], 3000))
tok = CharTokenizer.from_text(text)
cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
data = Dataset.from_text(text, tok, cfg.block_size)
tcfg = TrainConfig(steps=30, batch_size=4, warmup_steps=5, eval_every=10, eval_batches=2, checkpoint_every=1000)
'''

BACKPROP = Assignment(
    name="backprop", title="Backpropagation by hand", chapter="04_backprop.py",
    intro_sections=("## The gradient check",),
    parts=(
        Part("layernorm", "LayerNorm forward and backward",
             (_L + "layernorm:layernorm_forward", _L + "layernorm:layernorm_backward"),
             (("forward", 1), ("backward", 3)), ("### LayerNorm",)),
        Part("gelu", "GELU (tanh approximation) forward and backward",
             (_L + "gelu:gelu_forward", _L + "gelu:gelu_backward"),
             (("forward", 1), ("backward", 2)), ("### GELU",)),
        Part("cross_entropy", "Softmax cross-entropy",
             (_L + "cross_entropy:log_softmax", _L + "cross_entropy:cross_entropy_forward",
              _L + "cross_entropy:cross_entropy_backward"),
             (("log_softmax", 1), ("forward", 1), ("backward", 2)), ("### Cross-entropy", "### Softmax")),
        Part("attention", "Causal attention forward and backward",
             (_L + "attention:causal_attention_forward", _L + "attention:causal_attention_backward"),
             (("forward", 1), ("backward", 4)), ("### Attention",)),
    ),
    plug='''import numpy as np
from minigpt import GPT, CharTokenizer, Dataset, GPTConfig, TrainConfig
from minigpt.train import train
from minigpt.classroom import plugged
import hw_backprop
''' + _TINY_TRAIN + '''
with plugged(hw_backprop):  # the model's LayerNorm, GELU, attention and loss are now yours
    model = GPT(cfg, seed=0, tokenizer=tok, backend="numpy")
    mine = train(model, data, tcfg, progress=False)
reference = train(GPT(cfg, seed=0, tokenizer=tok, backend="numpy"), data, tcfg, progress=False)
print(f"final training loss with your ops {mine.train_losses[-1][1]:.6f}, "
      f"with minigpt's {reference.train_losses[-1][1]:.6f}")
''',
    plug_note="Inside `plugged(...)` every place in minigpt that uses one of these functions uses yours "
              "(with the NumPy backend; the numba kernels are separate implementations).",
)

TRAINING = Assignment(
    name="training", title="The optimizer: AdamW, warm-up + cosine, clipping", chapter="05_training.py",
    intro_sections=(),
    parts=(
        Part("adamw", "AdamW: one tensor's update, and the step over all of them",
             ("minigpt.optim:adamw_update_reference", "minigpt.optim:AdamW"),
             (("one tensor's update", 2), ("first step", 2), ("later steps and lr override", 2), ("state m, v, t", 1)),
             ("## AdamW",)),
        Part("schedule", "Warm-up + cosine learning-rate schedule", ("minigpt.optim:lr_schedule",),
             (("warm-up", 1), ("cosine decay", 2)), ("## Warm-up and cosine decay",)),
        Part("clipping", "Global-norm gradient clipping", ("minigpt.optim:clip_grad_norm",),
             (("norm", 1), ("clipping", 2)), ("## Gradient clipping",)),
    ),
    plug='''import numpy as np
from minigpt import GPT, CharTokenizer, Dataset, GPTConfig, TrainConfig
from minigpt.train import train
from minigpt.classroom import plugged
import hw_training
''' + _TINY_TRAIN + '''
class NumPyAdamW(hw_training.AdamW):
    """Your AdamW on its NumPy path (minigpt.train builds it with the default fused=True)."""
    def __init__(self, params, **settings):
        super().__init__(params, **settings, fused=False)


hw_training.AdamW = NumPyAdamW
with plugged(hw_training):  # minigpt.train now steps with your AdamW, schedule and clipping
    mine = train(GPT(cfg, seed=0, tokenizer=tok), data, tcfg, progress=False)
reference = train(GPT(cfg, seed=0, tokenizer=tok), data, tcfg, progress=False)
print(f"final training loss with your optimizer {mine.train_losses[-1][1]:.6f}, "
      f"with minigpt's {reference.train_losses[-1][1]:.6f}")
''',
)

_P = "minigpt.prune."
PRUNING = Assignment(
    name="pruning", title="Pruning: magnitude and global masks, N:M, head importance", chapter="06_pruning.py",
    intro_sections=("## Why pruning works",),
    parts=(
        Part("magnitude", "Magnitude masks: per tensor, per output, global",
             (_P + "masks:prune_counts", _P + "masks:prune_smallest", _P + "magnitude:prune_by_scores"),
             (("prune_counts", 1), ("prune_smallest", 2), ("tensor and output scopes", 2), ("global scope", 2)),
             ("## The methods",)),
        Part("nm", "N:M semi-structured masks", (_P + "nm:nm_group_mask",),
             (("all alive", 2), ("with dead weights", 1)), ()),
        Part("heads", "Head importance from the gate's gradient", (_P + "structured:head_importance",),
             (("importance vs centered differences", 3), ("model left unchanged", 1)),
             ("## Heads: importance from a gate's gradient",), timeout=60.0),
    ),
    plug='''import numpy as np
from minigpt import GPT, CharTokenizer, Dataset, GPTConfig, TrainConfig
from minigpt.prune.magnitude import global_masks
from minigpt.prune.nm import nm_masks, is_nm
from minigpt.classroom import plugged
import hw_pruning
''' + _TINY_TRAIN + '''
model = GPT(cfg, seed=0, tokenizer=tok)
with plugged(hw_pruning):  # minigpt.prune's own functions now call yours
    masks = global_masks(model.params, 0.5)
    nm = nm_masks(model.params, 2, 4)
alive = sum(int(m.sum()) for m in masks.values()) / sum(m.size for m in masks.values())
print(f"global 50%: {alive:.1%} of the linear weights alive; 2:4 pattern holds: "
      f"{all(is_nm(m, 2, 4) for m in nm.values())}")
''',
)

_Q = "minigpt.kernels.quantizer:"
QUANTIZATION = Assignment(
    name="quantization", title="Quantization: the affine quantizer, group-wise int4, the STE",
    chapter="07_quantization.py", intro_sections=(),
    parts=(
        Part("affine", "Affine and symmetric quantizer",
             (_Q + "scale_zero_point", _Q + "quantize", _Q + "dequantize"),
             (("scale and zero point", 2), ("quantize and dequantize", 2)), ("## 1. The quantizer",)),
        Part("groupwise", "Group-wise (int4) scales", (_Q + "slice_min_max", _Q + "expand"),
             (("group min and max", 2), ("expand", 1), ("int4 round trip", 1)), ("## 2. The number line",)),
        Part("ste", "Fake quantization and the straight-through backward",
             (_Q + "fake_quantize", "minigpt.quant.qat:fake_quant_backward"),
             (("fake_quantize", 2), ("straight-through backward", 2)), ("## 7. Quantization-aware training",)),
    ),
    plug='''import numpy as np
from minigpt.kernels.quantizer import quantize_tensor
from minigpt.classroom import plugged
import hw_quantization

w = np.random.default_rng(0).standard_normal((64, 16))  # a weight (in, out)
with plugged(hw_quantization):  # minigpt's quantizer now runs your functions
    qt = quantize_tensor(w, bits=4, symmetric=True, group=32, group_axis=0)
err = np.abs(qt.dequantize() - w).max()
print(f"int4, groups of 32: scales {qt.scale.shape}, max error {err:.4f} (half a step: {qt.scale.max() / 2:.4f})")
''',
)

DISTILLATION = Assignment(
    name="distillation", title="Knowledge distillation: the KD loss and its gradient",
    chapter="08_distillation.py", intro_sections=("## 1. Soft targets",),
    parts=(
        Part("kd_loss", "KD loss (KL at temperature T, times T^2, plus cross-entropy) and its gradient",
             ("minigpt.distill.loss:distill_forward", "minigpt.distill.loss:distill_backward"),
             (("forward", 3), ("backward", 4), ("reverse KL", 3)), ("## 2. The loss and its gradient",)),
    ),
    plug='''import numpy as np
import minigpt.distill.loss as kd
from minigpt.classroom import plugged
import hw_distillation

rng = np.random.default_rng(0)
s, t, y = rng.standard_normal((2, 8, 11)), 3 * rng.standard_normal((2, 8, 11)), rng.integers(0, 11, (2, 8))
with plugged(hw_distillation):  # minigpt.distill trains students with your loss
    loss, cache = kd.distill_forward(s, t, y, temperature=4.0, alpha=0.7)
    ds = kd.distill_backward(1.0, cache)
print(f"KD loss {loss:.4f}, gradient norm {np.linalg.norm(ds):.4f}")
''',
)

ASSIGNMENTS = {a.name: a for a in (BACKPROP, TRAINING, PRUNING, QUANTIZATION, DISTILLATION)}


def get(name: str) -> Assignment:
    if name not in ASSIGNMENTS:
        raise ClassroomError(f"unknown assignment {name!r}; choose one of {', '.join(ASSIGNMENTS)}")
    return ASSIGNMENTS[name]
