"""minigpt quantize and train --resume QCKPT --qat: the happy paths, and one line + exit 2 for bad input."""
import numpy as np
import pytest

from minigpt import load_checkpoint
from minigpt.cli import main
from minigpt.quant import quantized_layers

import char_checkpoint


@pytest.fixture
def ckpt(tmp_path):
    """A float checkpoint whose linears have 32 and 128 inputs, with its corpus beside it."""
    return char_checkpoint.write_char_checkpoint(tmp_path)


def _user_error(capsys, argv, *fragments):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) >= 1 and err[-1].startswith("minigpt: error: "), err
    assert "Traceback" not in "\n".join(err)
    for f in fragments:
        assert f in err[-1], (f, err[-1])


@pytest.mark.parametrize("flags, fmt", [(["--bits", "4"], "int4"), (["--bits", "3", "--group-size", "16"], "int4"),
                                        ([], "int8"), (["--bits", "6"], "int8"), (["--activations"], "w8a8"),
                                        (["--format", "q4_0"], "q4_0"), (["--format", "q8_0"], "q8_0")])
def test_quantize_then_sample_and_eval(ckpt, tmp_path, capsys, flags, fmt):
    q = tmp_path / "q.npz"
    assert main(["quantize", str(ckpt), "--out", str(q), "--max-batches", "2", "--tokens", "4", *flags]) == 0
    out = capsys.readouterr().out
    for row in ("val loss", "bits/char", "weight bytes", "bits per weight", "tokens/s", "x smaller", f"wrote {q}"):
        assert row in out, row
    model = load_checkpoint(q).model
    assert set(quantized_layers(model.params).values()) == {fmt}
    assert main(["sample", str(q), "--prompt", "def ", "--tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("def ")
    assert main(["eval", str(q), "--max-batches", "2"]) == 0
    assert capsys.readouterr().out.startswith("val loss ")


def test_keep_float(ckpt, tmp_path, capsys):
    q = tmp_path / "q.npz"
    assert main(["quantize", str(ckpt), "--out", str(q), "--max-batches", "1", "--tokens", "2",
                 "--keep-float", "*.mlp.c_proj", "h.0.attn.c_attn"]) == 0
    assert set(quantized_layers(load_checkpoint(q).model.params)) == {"h.0.attn.c_proj", "h.0.mlp.c_fc"}


@pytest.mark.parametrize("flags, fragments", [
    (["--bits", "9"], ["argument --bits: must be from 2 to 8, got 9"]),
    (["--bits", "1"], ["got 1"]),
    (["--bits", "four"], ["must be an integer from 2 to 8, got 'four'"]),
    (["--bits", "4", "--group-size", "24"], ["group size 24 does not divide the 32 inputs"]),
    (["--bits", "4", "--group-size", "0"], ["--group-size must be a positive even number, got 0"]),
    (["--bits", "8", "--group-size", "16"], ["--group-size applies to 2-4 bits"]),
    (["--bits", "4", "--activations"], ["--activations (W8A8) quantizes to 8 bits, not --bits 4"]),
    (["--format", "q4_0", "--bits", "8"], ["--format q4_0 stores 4-bit weights, not --bits 8"]),
    (["--format", "q8_0", "--group-size", "32"], ["fixed layout"]),
    (["--max-batches", "-1"], ["--max-batches must be positive"]),
])
def test_bad_quantize_options_get_one_line(ckpt, tmp_path, capsys, flags, fragments):
    _user_error(capsys, ["quantize", str(ckpt), "--out", str(tmp_path / "q.npz"), *flags], *fragments)
    assert not (tmp_path / "q.npz").exists()


def test_quantizing_a_quantized_checkpoint_or_over_itself_is_refused(ckpt, tmp_path, capsys):
    q = tmp_path / "q.npz"
    assert main(["quantize", str(ckpt), "--out", str(q), "--bits", "4", "--max-batches", "1", "--tokens", "2"]) == 0
    capsys.readouterr()
    _user_error(capsys, ["quantize", str(q), "--out", str(tmp_path / "qq.npz")], "quantized already")
    _user_error(capsys, ["quantize", str(ckpt), "--out", str(ckpt)], "is the checkpoint being quantized")
    _user_error(capsys, ["quantize", str(ckpt), "--out", str(tmp_path)], "is a directory")
    _user_error(capsys, ["quantize", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "z.npz")], "nope.npz")


def test_train_resume_qat(ckpt, tmp_path, capsys):
    q, qat = tmp_path / "q.npz", tmp_path / "qat.npz"
    assert main(["quantize", str(ckpt), "--out", str(q), "--bits", "3", "--group-size", "16",
                 "--max-batches", "1", "--tokens", "2"]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(q), "--qat", "--steps", "6", "--eval-every", "3", "--no-progress",
                 "--out", str(qat)]) == 0
    out = capsys.readouterr().out
    assert "finished step 6 of quantization-aware training" in out and f"wrote {qat}" in out
    before, after = load_checkpoint(q).model.params, load_checkpoint(qat).model.params
    assert set(before) == set(after)  # the same format: int4 arrays, groups of 16
    assert all(np.array_equal(after[k], 16) for k in after if k.endswith(".group"))
    codes = [np.unique(after[k]) for k in after if k.endswith(".int4")]
    assert all(set(np.unique(c & 15)) <= set(range(5, 12)) for c in codes)  # 3 bits: -3..3, stored + 8
    assert any(not np.array_equal(before[k], after[k]) for k in before)  # training moved something


def test_bad_qat_requests_get_one_line(ckpt, tmp_path, capsys):
    _user_error(capsys, ["train", "--qat", "--steps", "2"], "--qat fine-tunes a quantized checkpoint")
    _user_error(capsys, ["train", "--resume", str(ckpt), "--qat"], "holds float weights", "minigpt quantize")
    q = tmp_path / "q.npz"
    assert main(["quantize", str(ckpt), "--out", str(q), "--activations", "--max-batches", "1", "--tokens", "2"]) == 0
    capsys.readouterr()
    _user_error(capsys, ["train", "--resume", str(q), "--qat"], "not w8a8")
    _user_error(capsys, ["train", "--resume", str(q), "--qat", "--n-layer", "2"], "drop --n-layer")
