"""The command line: the happy path end to end, and one line + exit 2 for every user error."""
import subprocess
import sys

import numpy as np
import pytest

from minigpt.cli import main

TINY = ["--block-size", "16", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--batch-size", "4",
        "--eval-every", "5", "--no-progress"]


@pytest.fixture
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    words = ["def ", "return ", "x", "y", " = ", "(", ")", ":\n", "    ", "1", "+"]
    path = tmp_path / "code.txt"
    path.write_text("".join(rng.choice(words, 2000)), encoding="utf-8")
    return path


def _user_error(capsys, argv, *fragments):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) >= 1 and err[-1].startswith("minigpt: error: "), err
    assert "Traceback" not in "\n".join(err)
    for f in fragments:
        assert f in err[-1], (f, err[-1])
    return err[-1]


def test_train_sample_eval_resume(tmp_path, corpus, capsys):
    out = tmp_path / "m.npz"
    assert main(["train", "--text", str(corpus), "--steps", "10", "--out", str(out), *TINY]) == 0
    assert "finished step 10" in capsys.readouterr().out
    assert main(["sample", str(out), "--prompt", "def ", "--tokens", "20", "--top-k", "5", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("def ") and len(text.rstrip("\n")) >= 24
    assert main(["sample", str(out), "--prompt", "def ", "--tokens", "20", "--temperature", "0"]) == 0
    greedy1 = capsys.readouterr().out
    assert main(["sample", str(out), "--prompt", "def ", "--tokens", "20", "--temperature", "0", "--no-kv-cache"]) == 0
    assert capsys.readouterr().out == greedy1  # the KV cache does not change the result
    assert main(["eval", str(out)]) == 0
    line = capsys.readouterr().out
    assert line.startswith("val loss ") and "bits/char" in line and "step 10" in line
    assert main(["train", "--resume", str(out), "--steps", "15", "--no-progress"]) == 0
    assert "finished step 15" in capsys.readouterr().out


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "sample" in out and "eval" in out


def test_bad_corpus_files(tmp_path, capsys):
    _user_error(capsys, ["train", "--text", str(tmp_path / "nope.txt")], "not found", "nope.txt")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    _user_error(capsys, ["train", "--text", str(empty)], "empty")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"abc\xff\xfe")
    _user_error(capsys, ["train", "--text", str(binary)], "UTF-8", "0xff")
    short = tmp_path / "short.txt"
    short.write_text("tiny text")
    _user_error(capsys, ["train", "--text", str(short)], "block_size + 1")


def test_impossible_configs(corpus, capsys):
    _user_error(capsys, ["train", "--text", str(corpus), "--n-embd", "30", "--n-head", "4"], "n_embd=30", "n_head=4")
    _user_error(capsys, ["train", "--text", str(corpus), "--n-layer", "0"], "n_layer", "0")
    _user_error(capsys, ["train", "--text", str(corpus), "--dropout", "1.0"], "dropout", "1.0")
    _user_error(capsys, ["train", "--text", str(corpus), "--steps", "-3"], "steps", "-3")
    _user_error(capsys, ["train", "--text", str(corpus), "--lr", "nan"], "lr")
    _user_error(capsys, ["train", "--preset", "huge"], "huge")
    _user_error(capsys, ["train", "--text", str(corpus), "--backend", "cuda"], "cuda")
    _user_error(capsys, ["train", "--steps", "many"], "many")  # argparse type error, one line too


def test_bad_prompt_and_checkpoints(tmp_path, corpus, capsys):
    out = tmp_path / "m.npz"
    assert main(["train", "--text", str(corpus), "--steps", "2", "--out", str(out), *TINY]) == 0
    capsys.readouterr()
    _user_error(capsys, ["sample", str(out), "--prompt", "def \u00e9Z"], "not in the vocabulary", "'Z'", "'\u00e9'")
    _user_error(capsys, ["sample", str(out), "--top-p", "1.5"], "top_p")
    _user_error(capsys, ["sample", str(out), "--tokens", "0"], "--tokens")
    _user_error(capsys, ["sample", str(tmp_path / "none.npz")], "not found")
    cut = tmp_path / "cut.npz"
    cut.write_bytes(out.read_bytes()[:500])
    _user_error(capsys, ["sample", str(cut)], "truncated")
    _user_error(capsys, ["eval", str(corpus)], "truncated or another format")
    _user_error(capsys, ["train", "--resume", str(out), "--steps", "2"], "already at step 2")


def test_diverging_run_is_a_user_error(tmp_path, corpus, capsys):
    # an absurd learning rate blows the weights up within a few steps
    msg = _user_error(capsys, ["train", "--text", str(corpus), "--steps", "30", "--lr", "1e12",
                               "--warmup-steps", "0", "--grad-clip", "0", "--out", str(tmp_path / "m.npz"), *TINY],
                      "at step")
    assert "nan" in msg or "inf" in msg


def test_console_script_prints_one_line_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "minigpt", "sample", str(tmp_path / "missing.npz")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"minigpt: error: checkpoint not found: {tmp_path / 'missing.npz'}"]


def test_unwritable_output_fails_before_training(tmp_path, corpus, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where a directory would have to be
    _user_error(capsys, ["train", "--text", str(corpus), "--out", str(blocker / "m.npz"), *TINY], "cannot write")
    _user_error(capsys, ["train", "--text", str(corpus), "--out", str(tmp_path), *TINY], "is a directory")
