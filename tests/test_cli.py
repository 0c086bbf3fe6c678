"""The command line: the happy path end to end, and one line + exit 2 for every user error."""
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from minigpt import load_checkpoint
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
    _user_error(capsys, ["eval", str(corpus)], "not a minigpt checkpoint")
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


def _train_tiny(tmp_path, corpus, capsys, steps="2"):
    out = tmp_path / "m.npz"
    assert main(["train", "--text", str(corpus), "--steps", steps, "--out", str(out), *TINY]) == 0
    capsys.readouterr()
    return out


def test_resume_refuses_shape_options_that_disagree_with_the_checkpoint(tmp_path, corpus, capsys):
    out = _train_tiny(tmp_path, corpus, capsys)
    before = out.read_bytes()
    msg = _user_error(capsys, ["train", "--resume", str(out), "--preset", "small", "--n-embd", "32", "--n-layer", "5",
                               "--dtype", "float64", "--block-size", "128", "--steps", "4"],
                      "--preset small", "--n-embd 32 (the checkpoint has 16)", "--n-layer 5", "--dtype float64",
                      "--block-size 128")
    assert "--steps" not in msg  # a training option is not a conflict
    assert out.read_bytes() == before  # nothing was trained
    _user_error(capsys, ["train", "--resume", str(out), "--seed", "7", "--steps", "4"], "--seed 7")


def test_resume_applies_and_reports_training_options(tmp_path, corpus, capsys):
    out = _train_tiny(tmp_path, corpus, capsys)
    # options equal to the checkpoint's own values are not conflicts
    assert main(["train", "--resume", str(out), "--n-embd", "16", "--n-head", "2", "--dtype", "float32",
                 "--steps", "4", "--lr", "0.001", "--batch-size", "4", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "--steps 2 -> 4" in captured.err and "--lr 0.003 -> 0.001" in captured.err
    assert "--batch-size" not in captured.err  # unchanged, so not reported
    assert "finished step 4" in captured.out
    tcfg = load_checkpoint(out).train_config
    assert (tcfg.steps, tcfg.lr, tcfg.batch_size) == (4, 0.001, 4)


def test_no_progress_logs_one_line_per_validation(tmp_path, corpus, capsys):
    assert main(["train", "--text", str(corpus), "--steps", "10", "--out", str(tmp_path / "m.npz"), *TINY]) == 0
    lines = capsys.readouterr().out.splitlines()
    evals = [line for line in lines if line.startswith("step ")]
    assert [line.split(":")[0] for line in evals] == ["step 5/10", "step 10/10"]
    for line in evals:
        assert "train loss " in line and "val loss " in line and "bits/char" in line and "tokens/s" in line
    assert lines[-1].startswith("finished step 10")


def test_eval_of_a_directory_says_so(tmp_path, capsys):
    (tmp_path / "adir").mkdir()
    _user_error(capsys, ["eval", str(tmp_path / "adir")], "adir is a directory")


def test_a_text_file_is_not_a_checkpoint_and_pickle_is_never_suggested(corpus, capsys):
    for cmd in ("sample", "eval"):
        msg = _user_error(capsys, [cmd, str(corpus)], "code.txt is not a minigpt checkpoint")
        assert "pickle" not in msg and "trust" not in msg


def _options(parser):
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


def test_help_shows_every_option_with_its_default(capsys):
    from minigpt.cli import build_parser

    subparsers = build_parser()._subparsers._group_actions[0].choices
    for name in ("train", "sample", "eval"):
        assert main([name, "--help"]) == 0
        text = capsys.readouterr().out
        assert "%%" not in text, name
        for action in subparsers[name]._actions:
            if action.dest == "help":
                continue
            assert action.help, (name, action.dest)  # every option and argument explained
            if action.option_strings and not isinstance(action.const, bool):  # not a flag
                assert "default" in action.help, (name, action.dest)
    assert main(["eval", "--help"]) == 0
    assert "10% of the corpus" in " ".join(capsys.readouterr().out.split())


def test_ctrl_c_saves_and_exits_130_without_unmeasured_numbers(tmp_path, corpus):
    out = tmp_path / "m.npz"
    argv = [sys.executable, "-m", "minigpt", "train", "--text", str(corpus), "--out", str(out), "--backend", "numpy",
            "--steps", "100000", "--eval-every", "100000", "--checkpoint-every", "3", "--block-size", "16",
            "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--batch-size", "4", "--no-progress"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not out.exists():  # the first checkpoint: the loop (and its Ctrl-C handler) is running
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stderr
    assert "nan" not in (stdout + stderr).lower()  # no validation ran, so none is printed
    summary = stdout.strip().splitlines()[-1]
    assert summary.startswith("interrupted at step ") and "no validation yet" in summary, summary
    step = int(summary.split()[3].rstrip(":"))
    ckpt = load_checkpoint(out)
    assert ckpt.step == step >= 3 and ckpt.optimizer_state["t"] == step  # saved where it stopped
