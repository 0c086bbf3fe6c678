"""`minigpt distill`: a student from a checkpoint of `minigpt train`, the
report it prints, a checkpoint that eval / sample / train --resume accept,
and one-line errors (exit 2) for bad requests."""
import numpy as np
import pytest

from minigpt import GPT, GPTConfig, TrainConfig, load_checkpoint
from minigpt.cli import main
from minigpt.data import Dataset
from minigpt.tokenizer import CharTokenizer
from minigpt.train import train

TEXT = "def f(x):\n    return x * 2 + 1\n\nclass A:\n    pass\n" * 80
FAST = ["--eval-batches", "2", "--bench-tokens", "4", "--backend", "numpy", "--no-progress"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("distill")
    (d / "text.txt").write_text(TEXT)
    tok = CharTokenizer.from_text(TEXT)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=16)
    model = GPT(cfg, seed=0, tokenizer=tok, backend="numpy")
    tcfg = TrainConfig(steps=20, batch_size=4, warmup_steps=2, eval_every=20, eval_batches=1, checkpoint_every=20)
    train(model, Dataset.from_text(TEXT, tok, 16), tcfg, out=d / "t.npz", progress=False,
          extra_meta={"corpus": str(d / "text.txt")})
    return d


def distill(d, *args):
    return main(["distill", str(d / "t.npz"), *FAST, *args])


@pytest.mark.parametrize("init", ["teacher", "random"])
def test_distill_writes_a_student_and_reports(setup, capsys, init):
    out = setup / f"s-{init}.npz"
    assert distill(setup, "--n-layer", "1", "--n-embd", "8", "--n-head", "2", "--steps", "6", "--init", init,
                   "--temperature", "3", "--alpha", "0.7", "--out", str(out)) == 0
    text = capsys.readouterr().out
    for line in ("val loss", "parameters", "parameter bytes", "bytes on disk", "generation tokens/s",
                 f"wrote {out}"):
        assert line in text, line
    ckpt = load_checkpoint(out)
    s = ckpt.model
    assert (s.config.n_layer, s.config.n_embd, s.config.n_head) == (1, 8, 2) and ckpt.step == 6
    assert ckpt.meta["distilled"]["temperature"] == 3.0 and ckpt.meta["distilled"]["init"] == init
    n = s.num_params()
    assert f"{n:,}" in text.split("parameters")[1].split("\n")[0]
    assert main(["eval", str(out), "--backend", "numpy", "--max-batches", "1"]) == 0
    assert main(["sample", str(out), "--backend", "numpy", "--tokens", "5", "--prompt", "d"]) == 0
    assert main(["train", "--resume", str(out), "--steps", "8", "--no-progress", "--backend", "numpy"]) == 0
    assert load_checkpoint(out).step == 8


@pytest.mark.parametrize("args,words", [
    (["--temperature", "0"], "temperature"),
    (["--temperature", "-2"], "temperature"),
    (["--alpha", "1.5"], "alpha"),
    (["--alpha", "-0.1"], "alpha"),
    (["--init", "copy"], "--init"),
    (["--n-head", "3"], "divisible"),
    (["--steps", "0"], "--steps"),
    (["--n-embd", "32"], "cannot start"),
    (["--hidden", "0:7"], "--hidden"),
    (["--hidden", "first"], "--hidden"),
    (["--hidden-weight", "-1"], "--hidden-weight"),
])
def test_bad_requests_get_one_line_and_exit_2(setup, capsys, args, words):
    base = {"--n-layer": "1", "--n-embd": "8", "--n-head": "2", "--steps": "2"}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    flat = [x for kv in base.items() for x in kv]
    assert distill(setup, *flat, "--out", str(setup / "bad.npz")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minigpt: error:") and words in err[0], err
    assert not (setup / "bad.npz").exists()


def test_text_outside_the_vocabulary_is_a_user_error(setup, capsys):
    (setup / "other.txt").write_text("ZZZZ qqq \u00e9\u00e9 " * 200)
    assert distill(setup, "--n-layer", "1", "--n-embd", "8", "--n-head", "2", "--steps", "2",
                   "--text", str(setup / "other.txt"), "--out", str(setup / "bad.npz")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minigpt: error:"), err


def test_missing_teacher_is_a_user_error(setup, capsys):
    assert main(["distill", str(setup / "nope.npz"), "--n-layer", "1", "--n-embd", "8", "--n-head", "2",
                 "--out", str(setup / "bad.npz")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_distill_with_hidden_states(setup, capsys):
    out = setup / "s-hidden.npz"
    assert distill(setup, "--n-layer", "1", "--n-embd", "8", "--n-head", "2", "--steps", "4", "--hidden", "all",
                   "--hidden-weight", "0.5", "--out", str(out)) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    meta = load_checkpoint(out).meta["distilled"]["hidden"]
    assert meta == {"pairs": {"0": 1}, "kind": "mse", "weight": 0.5}
