"""minigpt: a GPT-2 in NumPy with hand-written backward passes.

    from minigpt import GPTConfig, GPT
    model = GPT(GPTConfig(vocab_size=96, block_size=64, n_layer=2, n_head=4, n_embd=64), seed=0)
    logits, loss = model.forward(idx, targets)
    grads = model.backward()
"""
import os as _os

# NumPy's OpenBLAS workers spin for ~2^28 cycles after each matmul; with 2
# cores that spin takes a core from the numba kernel that follows (measured:
# a matmul then an attention backward took 12.7 ms instead of 6.8 ms).
# Read when OpenBLAS loads, so only effective if numpy is not imported yet.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from .checkpoint import Checkpoint, save_checkpoint
from .config import PRESETS, GPTConfig, TrainConfig, preset
from .data import Dataset, load_corpus
from .errors import (
    CheckpointError,
    ConfigError,
    CorpusError,
    MinigptError,
    TokenizerError,
    TrainingDiverged,
)
from .model import GPT, KVCache, load_checkpoint
from .tokenizer import CharTokenizer
from .train import TrainResult, evaluate, train

__all__ = [
    "GPT", "GPTConfig", "TrainConfig", "PRESETS", "preset", "KVCache",
    "CharTokenizer", "Dataset", "load_corpus",
    "Checkpoint", "save_checkpoint", "load_checkpoint",
    "train", "evaluate", "TrainResult",
    "MinigptError", "ConfigError", "CorpusError", "TokenizerError", "CheckpointError", "TrainingDiverged",
]
__version__ = "0.1.0"
