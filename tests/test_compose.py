"""The compression commands compose (minigpt.compose): a teacher trained by
`minigpt train`, distilled, pruned (heads, neurons, magnitude with masked
fine-tuning), quantized (RTN int4 / int8, GPTQ) and fine-tuned with QAT, all
through the CLI; every stage's checkpoint loads, evaluates, samples and says
which steps made it. Orders that cannot work are refused in one line (exit 2)."""
import numpy as np
import pytest

from minigpt.cli import main
from minigpt.compose import default_group, lineage, stored_as
from minigpt.model import load_checkpoint

TEXT = "def f(x):\n    return x * 2 + 1\n\nclass A:\n    pass\n" * 80
NP = ["--backend", "numpy"]
PRUNE = ["--eval-batches", "2", "--bench-tokens", "4", "--calibration", "4", *NP, "--no-progress"]
QUANT = ["--max-batches", "2", "--tokens", "4", *NP]

# (name, argv after the input file) in chain order; each reads the checkpoint named in its input
CHAIN = [
    ("student", "teacher", ["distill", "--n-layer", "1", "--n-embd", "32", "--n-head", "4", "--steps", "6",
                            "--eval-batches", "2", "--bench-tokens", "4", *NP, "--no-progress"]),
    ("heads", "student", ["prune", "--method", "heads", "--sparsity", "0.5", *PRUNE]),
    ("neurons", "heads", ["prune", "--method", "neurons", "--sparsity", "0.5", "--finetune-steps", "3", *PRUNE]),
    ("masked", "neurons", ["prune", "--method", "magnitude", "--sparsity", "0.5", "--finetune-steps", "3", *PRUNE]),
    ("csr", "masked", ["prune", "--method", "magnitude", "--sparsity", "0.6", "--sparse-storage", *PRUNE]),
    ("int4", "masked", ["quantize", "--bits", "4", *QUANT]),
    ("gptq", "masked", ["quantize", "--bits", "4", "--method", "gptq", "--calib-batches", "1", *QUANT]),
    ("int8", "masked", ["quantize", "--bits", "8", *QUANT]),
    ("qat", "int4", ["train", "--qat", "--steps", "3", "--batch-size", "2", *NP, "--no-progress"]),
]


def _run(d, name, src, argv):
    cmd, rest = argv[0], argv[1:]
    if cmd == "train":  # train --resume QCKPT --qat
        return main([cmd, "--resume", str(d / f"{src}.npz"), *rest, "--out", str(d / f"{name}.npz")])
    return main([cmd, str(d / f"{src}.npz"), *rest, "--out", str(d / f"{name}.npz")])


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    d = tmp_path_factory.mktemp("compose")
    (d / "text.txt").write_text(TEXT)
    assert main(["train", "--text", str(d / "text.txt"), "--n-layer", "2", "--n-embd", "32", "--n-head", "4",
                 "--block-size", "16", "--steps", "20", "--batch-size", "4", "--eval-every", "20",
                 "--out", str(d / "teacher.npz"), *NP, "--no-progress"]) == 0
    codes = {name: _run(d, name, src, argv) for name, src, argv in CHAIN}
    return d, codes


def test_every_stage_of_the_chain_runs(chain):
    _, codes = chain
    assert codes == {name: 0 for name, _, _ in CHAIN}


@pytest.mark.parametrize("name", [n for n, _, _ in CHAIN])
def test_each_stage_loads_evaluates_samples_and_records_its_steps(chain, capsys, name):
    d, _ = chain
    path = d / f"{name}.npz"
    ckpt = load_checkpoint(path, backend="numpy")
    parents = {n: s for n, s, _ in CHAIN}
    steps = [name]
    while steps[-1] in parents:
        steps.append(parents[steps[-1]])
    made = lineage(ckpt.meta, ckpt.step)
    assert len(made) == len(steps)  # the teacher's training, then one line a command
    assert made[0].startswith("train") and made[1].startswith("distill")
    assert f"from {d / (parents[name] + '.npz')}" in made[-1]
    capsys.readouterr()
    assert main(["eval", str(path), "--max-batches", "2", "--bench-tokens", "4", *NP]) == 0
    out = capsys.readouterr().out
    assert f"{path.stat().st_size:,} bytes on disk" in out and "tokens/s" in out  # size and speed, like any model
    assert f"stored as {stored_as(ckpt.model.params)}" in out
    loss = float(out.split("val loss ")[1].split()[0])
    assert np.isfinite(loss) and loss < np.log(ckpt.model.config.vocab_size) + 1  # a model, not noise
    assert "made by: train 20 steps -> distill 1 x 32 x 4 heads" in out
    assert main(["sample", str(path), "--tokens", "8", "--prompt", "def", *NP]) == 0
    assert capsys.readouterr().out.startswith("def")


def test_the_stages_are_what_they_say(chain):
    d, _ = chain
    ck = {n: load_checkpoint(d / f"{n}.npz", backend="numpy") for n in ("student", "heads", "neurons", "masked",
                                                                         "csr", "int4", "gptq", "int8", "qat")}
    s, h, n = (ck[k].model.params for k in ("student", "heads", "neurons"))
    assert h["h.0.attn.c_proj.weight"].shape[0] == s["h.0.attn.c_proj.weight"].shape[0] // 2  # 2 of 4 heads
    assert n["h.0.mlp.c_fc.weight"].shape[1] == s["h.0.mlp.c_fc.weight"].shape[1] // 2
    masks = ck["masked"].masks
    assert masks and all(not ck["masked"].model.params[k][~m].any() for k, m in masks.items())  # kept at 0
    assert [stored_as(ck[k].model.params) for k in ("masked", "csr", "int4", "gptq", "int8", "qat")] == \
        ["float", "csr", "int4", "int4", "int8", "int4"]
    # the attention projection is 16 inputs wide after losing half its heads: groups of 16, not 32
    assert int(ck["int4"].model.params["h.0.attn.c_proj.weight.group"]) == 16
    assert ck["qat"].meta["qat"]["steps"] == 3


@pytest.mark.parametrize("src, argv, words", [
    ("int4", ["prune", "--method", "heads", "--sparsity", "0.5", *PRUNE], ["int4 weights", "prune the float"]),
    ("int8", ["prune", "--method", "magnitude", "--sparsity", "0.5", *PRUNE], ["int8 weights", "prune the float"]),
    ("csr", ["prune", "--method", "wanda", "--sparsity", "0.5", *PRUNE], ["CSR", "store CSR last"]),
    ("csr", ["quantize", "--bits", "4", *QUANT], ["CSR", "prune without --sparse-storage"]),
    ("int4", ["quantize", "--bits", "8", *QUANT], ["quantized already"]),
    ("csr", ["train", "--qat", "--steps", "2", *NP], ["--qat needs a quantized checkpoint"]),
    ("int4", ["train", "--steps", "30", *NP], ["int4 weights", "--qat"]),
    ("csr", ["train", "--steps", "30", *NP], ["CSR", "fine-tune the dense pruned checkpoint"]),
])
def test_orders_that_cannot_compose_are_refused_in_one_line(chain, capsys, src, argv, words):
    d, _ = chain
    capsys.readouterr()
    assert _run(d, "refused", src, argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("minigpt: error: ") and "\n" not in err and "Traceback" not in err
    for w in words:
        assert w in err, (w, err)
    assert not (d / "refused.npz").exists()


def test_default_group_fits_every_layer():
    params = {"h.0.attn.c_attn.weight": np.zeros((64, 192)), "h.0.attn.c_proj.weight": np.zeros((24, 64))}
    assert default_group(params) == 8  # the largest even divisor of 32 that divides 64 and 24
    assert default_group({"h.0.mlp.c_fc.weight": np.zeros((64, 256))}) == 32
