"""A small float checkpoint of a character model, its corpus beside it, for the CLI tests.

The corpus is 3000 code-like words drawn with a fixed seed; the model has one
block, 2 heads, 32 wide (linears of 32 and 128 inputs), saved at step 7 with
the corpus path recorded, as `minigpt train` would leave it.
"""
import numpy as np

from minigpt import GPT, CharTokenizer, GPTConfig
from minigpt.checkpoint import save_checkpoint
from minigpt.config import TrainConfig

WORDS = ["def ", "return ", "x", "y", " = ", "(", ")", ":\n", "    ", "1", "+"]


def write_char_checkpoint(directory):
    """Write DIR/code.txt and DIR/m.npz; returns the checkpoint's path."""
    rng = np.random.default_rng(0)
    corpus = directory / "code.txt"
    corpus.write_text("".join(rng.choice(WORDS, 3000)), encoding="utf-8")
    tok = CharTokenizer.from_text(corpus.read_text(encoding="utf-8"))
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=32)
    path = directory / "m.npz"
    save_checkpoint(path, GPT(cfg, seed=0, tokenizer=tok), step=7,
                    train_config=TrainConfig(steps=7, batch_size=4, eval_batches=2), extra={"corpus": str(corpus)})
    return path
