"""minigpt quantize --method kmeans: the table, the checkpoint it writes, and one line + exit 2 for clashes."""
import numpy as np
import pytest

from minigpt import load_checkpoint
from minigpt.cli import main
from minigpt.quant import quantized_layers
from minigpt.quant.cli import kmeans_bytes
from minigpt.quant.huffman import huffman_decode, huffman_encode

from test_quant_cli import _user_error, ckpt  # noqa: F401  (the fixture: a tiny float checkpoint and its corpus)


def _value(out, row, col=1):
    """The col-th number of the table row starting with `row` (commas dropped)."""
    line = next(ln for ln in out.splitlines() if ln.startswith(row))
    return float(line[len(row):].split()[col - 1].replace(",", ""))


@pytest.mark.parametrize("bits", [2, 4])
def test_kmeans_quantize_then_sample_and_eval(ckpt, tmp_path, capsys, bits):  # noqa: F811
    q = tmp_path / "q.npz"
    assert main(["quantize", str(ckpt), "--out", str(q), "--method", "kmeans", "--bits", str(bits),
                 "--centroid-steps", "3", "--max-batches", "2", "--tokens", "4"]) == 0
    out = capsys.readouterr().out
    for row in ("val loss", "before centroid FT", "bits/char", "weight bytes", "Huffman-coded", "bits per weight",
                "tokens/s", f"wrote {q}"):
        assert row in out, row
    params = load_checkpoint(q).model.params
    assert set(quantized_layers(params).values()) == {"kmeans"}
    assert all(len(np.unique(params[k])) <= 2 ** bits for k in params if k.endswith(".kmeans_idx"))
    packed, huff, held, n = kmeans_bytes(params)
    codebooks = sum(params[k].nbytes for k in params if k.endswith(".codebook"))
    assert packed == sum(-(-params[k].size * bits // 8) for k in params if k.endswith(".kmeans_idx")) + codebooks
    assert held == n + codebooks  # one uint8 an index in memory
    # the printed bits per weight are the packed bytes' (b bits + the codebooks spread over the weights)
    assert _value(out, "bits per weight", 2) == pytest.approx(8 * packed / n, abs=0.006)
    assert _value(out, "  Huffman-coded idx", 1) == pytest.approx(8 * huff / n, abs=0.006)
    assert 8 * packed / n == pytest.approx(bits + 8 * codebooks / n)  # every size here is a multiple of 8
    idx = next(params[k] for k in params if k.endswith(".kmeans_idx"))
    assert np.array_equal(huffman_decode(huffman_encode(idx, 2 ** bits)), idx.ravel())  # what the bytes stand for
    assert main(["sample", str(q), "--prompt", "def ", "--tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("def ")
    assert main(["eval", str(q), "--max-batches", "2"]) == 0
    assert capsys.readouterr().out.startswith("val loss ")


def test_kmeans_centroid_steps_move_only_codebooks(ckpt, tmp_path, capsys):  # noqa: F811
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    common = ["--method", "kmeans", "--bits", "3", "--max-batches", "1", "--tokens", "2", "--keep-float", "*.mlp.*"]
    assert main(["quantize", str(ckpt), "--out", str(a), *common]) == 0
    assert main(["quantize", str(ckpt), "--out", str(b), "--centroid-steps", "4", *common]) == 0
    capsys.readouterr()
    pa, pb = load_checkpoint(a).model.params, load_checkpoint(b).model.params
    assert set(quantized_layers(pa)) == {"h.0.attn.c_attn", "h.0.attn.c_proj"}  # the MLP kept float
    for k in pa:
        same = np.array_equal(pa[k], pb[k])
        assert same != k.endswith(".codebook"), k  # the codebooks moved, nothing else did
    assert load_checkpoint(b).meta["quantization"]["centroid_steps"] == 4


@pytest.mark.parametrize("flags, fragments", [
    (["--bits", "9"], ["argument --bits: must be from 2 to 8, got 9"]),
    (["--group-size", "16"], ["--method kmeans", "drop --group-size"]),
    (["--activations"], ["drop --activations"]),
    (["--format", "q4_0"], ["drop --format"]),
    (["--smooth", "0.5"], ["drop --smooth"]),
    (["--calib-batches", "2"], ["drop --calib-batches"]),
    (["--centroid-steps", "-1"], ["--centroid-steps must be 0 or more, got -1"]),
])
def test_bad_kmeans_options_get_one_line(ckpt, tmp_path, capsys, flags, fragments):  # noqa: F811
    _user_error(capsys, ["quantize", str(ckpt), "--out", str(tmp_path / "q.npz"), "--method", "kmeans", *flags],
                *fragments)
    assert not (tmp_path / "q.npz").exists()


def test_centroid_steps_need_kmeans(ckpt, tmp_path, capsys):  # noqa: F811
    _user_error(capsys, ["quantize", str(ckpt), "--out", str(tmp_path / "q.npz"), "--method", "gptq",
                         "--centroid-steps", "5"], "--centroid-steps", "needs --method kmeans, not gptq")
    _user_error(capsys, ["quantize", str(ckpt), "--out", str(tmp_path / "q.npz"), "--centroid-steps", "5"],
                "not rtn")
