"""`minigpt prune`: each method on a checkpoint from training, the report it
prints, masks kept by `train --resume`, pruned checkpoints accepted by
sample / eval / export-hf, and one-line errors (exit 2) for bad requests."""
import numpy as np
import pytest

from minigpt import GPT, GPTConfig, TrainConfig, load_checkpoint
from minigpt.cli import main
from minigpt.data import Dataset
from minigpt.model import is_uniform
from minigpt.tokenizer import CharTokenizer
from minigpt.train import train

TEXT = "def f(x):\n    return x * 2 + 1\n\nclass A:\n    pass\n" * 80
FAST = ["--eval-batches", "2", "--bench-tokens", "4", "--calibration", "4", "--backend", "numpy"]


def make_checkpoint(path, n_embd=16, n_head=2):
    tok = CharTokenizer.from_text(TEXT)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=n_head, n_embd=n_embd)
    model = GPT(cfg, seed=0, tokenizer=tok, backend="numpy")
    tcfg = TrainConfig(steps=20, batch_size=4, warmup_steps=2, eval_every=20, eval_batches=1, checkpoint_every=20)
    train(model, Dataset.from_text(TEXT, tok, 16), tcfg, out=path, progress=False, extra_meta={"corpus": None})
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("prune")
    (d / "text.txt").write_text(TEXT)
    return d, make_checkpoint(d / "m.npz")


def prune(setup, *args):
    d, ckpt = setup
    return main(["prune", str(ckpt), "--text", str(d / "text.txt"), *FAST, *args])


@pytest.mark.parametrize("method", ["magnitude", "global", "random", "wanda"])
def test_unstructured_methods_prune_exactly_and_report(setup, capsys, method):
    d, _ = setup
    out = d / f"{method}.npz"
    assert prune(setup, "--method", method, "--sparsity", "0.5", "--out", str(out)) == 0
    text = capsys.readouterr().out
    for line in ("val loss", "alive attn.c_attn.weight", "alive mlp.c_proj.weight", "bytes on disk",
                 "generation tokens/s", f"wrote {out}"):
        assert line in text, line
    ckpt = load_checkpoint(out)
    pruned = sum(int((~m).sum()) for m in ckpt.masks.values())
    total = sum(m.size for m in ckpt.masks.values())
    if method == "global":
        assert pruned == round(0.5 * total)
    else:  # per tensor (wanda: per output column), each exactly half
        assert all(int((~m).sum()) == m.size // 2 for m in ckpt.masks.values())
    assert all(not ckpt.model.params[k][~m].any() for k, m in ckpt.masks.items())
    assert ckpt.step == 0 and ckpt.optimizer_state is None  # a fine-tuning run, not started yet: no moments


def test_one_shot_checkpoint_resumes_with_a_fresh_optimizer_and_its_masks(setup, capsys):
    d, _ = setup
    out = d / "oneshot.npz"
    assert prune(setup, "--method", "magnitude", "--sparsity", "0.5", "--out", str(out)) == 0
    ckpt = load_checkpoint(out)
    with_moments = d / "with_moments.npz"  # what the file was when it stored AdamW's (zero) moments
    from minigpt.checkpoint import save_checkpoint
    from minigpt.optim import AdamW
    save_checkpoint(with_moments, ckpt.model, step=0, optimizer=AdamW(ckpt.model.params, lr=1e-3),
                    train_config=ckpt.train_config, masks=ckpt.masks)
    assert out.stat().st_size < 0.6 * with_moments.stat().st_size
    assert main(["train", "--resume", str(out), "--steps", "4", "--text", str(d / "text.txt"), "--no-progress",
                 "--backend", "numpy"]) == 0
    again = load_checkpoint(out)
    assert again.step == 4 and again.optimizer_state["t"] == 4
    for k, m in ckpt.masks.items():
        assert np.array_equal(again.masks[k], m) and not again.model.params[k][~m].any()
        assert not np.array_equal(again.model.params[k], ckpt.model.params[k])  # it did train


def test_finetune_keeps_masks_and_train_resume_too(setup, capsys):
    d, _ = setup
    out = d / "ft.npz"
    assert prune(setup, "--method", "2:4", "--finetune-steps", "6", "--no-progress", "--out", str(out)) == 0
    text = capsys.readouterr().out
    assert "val loss, one-shot" in text and "val loss, fine-tuned 6" in text
    ckpt = load_checkpoint(out)
    assert ckpt.step == 6 and all(int(m.sum()) == m.size // 2 for m in ckpt.masks.values())
    assert main(["train", "--resume", str(out), "--steps", "10", "--text", str(d / "text.txt"), "--no-progress",
                 "--backend", "numpy"]) == 0
    again = load_checkpoint(out)
    assert again.step == 10
    for k, m in ckpt.masks.items():
        assert np.array_equal(again.masks[k], m) and not again.model.params[k][~m].any()
        assert not np.array_equal(again.model.params[k], ckpt.model.params[k])  # it did train


def test_gradual_reaches_its_sparsity(setup, capsys):
    d, _ = setup
    out = d / "gradual.npz"
    assert prune(setup, "--method", "gradual", "--sparsity", "0.6", "--finetune-steps", "12", "--no-progress",
                 "--out", str(out)) == 0
    assert "cubic schedule to 60.0%" in capsys.readouterr().out
    ckpt = load_checkpoint(out)
    assert all(int((~m).sum()) == round(0.6 * m.size) for m in ckpt.masks.values())


def test_heads_and_neurons_shrink_and_the_result_samples_evaluates_and_exports(setup, capsys, tmp_path):
    d, _ = setup
    heads, neurons = d / "heads.npz", d / "neurons.npz"
    assert prune(setup, "--method", "heads", "--sparsity", "0.5", "--out", str(heads)) == 0
    assert "removed 2 heads" in capsys.readouterr().out
    small = load_checkpoint(heads).model
    assert sum(h for h, _ in small.layer_shapes()) == 2
    assert prune(setup, "--method", "neurons", "--sparsity", "0.25", "--out", str(neurons)) == 0
    assert sum(f for _, f in load_checkpoint(neurons).model.layer_shapes()) == 96
    capsys.readouterr()
    for ckpt in (heads, neurons):
        assert main(["sample", str(ckpt), "--prompt", "def", "--tokens", "5", "--backend", "numpy"]) == 0
        assert main(["eval", str(ckpt), "--text", str(d / "text.txt"), "--max-batches", "1",
                     "--backend", "numpy"]) == 0
    # export to GPT-2's format needs one n_head and one MLP width for all layers
    for ckpt in (heads, neurons):
        m = load_checkpoint(ckpt).model
        expected = 0 if is_uniform(m.params, m.config) else 2
        assert main(["export-hf", str(ckpt), str(tmp_path / ckpt.stem)]) == expected


def test_export_hf_of_an_unstructured_pruned_checkpoint(setup, tmp_path):
    d, _ = setup
    out = d / "mag80.npz"
    assert prune(setup, "--method", "magnitude", "--sparsity", "0.8", "--out", str(out)) == 0
    assert main(["export-hf", str(out), str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "model.safetensors").is_file()


def test_sparse_storage_writes_csr_that_loads_to_the_same_weights(setup, capsys):
    from minigpt.prune.sparse import sparse_names, to_dense

    d, _ = setup
    dense_out, sparse_out = d / "dense90.npz", d / "sparse90.npz"
    assert prune(setup, "--method", "magnitude", "--sparsity", "0.9", "--out", str(dense_out)) == 0
    assert prune(setup, "--method", "magnitude", "--sparsity", "0.9", "--sparse-storage", "--out", str(sparse_out)) == 0
    assert "8 matrices stored as CSR" in capsys.readouterr().out
    dense, sparse = load_checkpoint(dense_out), load_checkpoint(sparse_out)
    assert len(sparse_names(sparse.model.params)) == 8 and sparse.masks is None
    back = to_dense(sparse.model.params)
    assert all(np.array_equal(back[k], v) for k, v in dense.model.params.items())
    # neither stores AdamW moments; CSR at 90% zeros shrinks the pruned matrices, the embeddings stay dense
    assert sparse_out.stat().st_size < 0.75 * dense_out.stat().st_size
    assert main(["sample", str(sparse_out), "--prompt", "def", "--tokens", "5", "--backend", "numpy"]) == 0


def test_sensitivity_meets_its_budget_on_training_windows(setup, capsys):
    from minigpt.train import evaluate

    d, ckpt_path = setup
    out = d / "sens.npz"
    assert prune(setup, "--method", "sensitivity", "--max-loss-increase", "0.02", "--out", str(out)) == 0
    assert "per matrix: h.0.attn.c_attn" in capsys.readouterr().out
    dense, pruned = load_checkpoint(ckpt_path), load_checkpoint(out)
    ds = Dataset.from_text(TEXT, dense.model.tokenizer, 16)
    rise = evaluate(pruned.model, ds, "train", 32, 2) - evaluate(dense.model, ds, "train", 32, 2)
    assert rise <= 0.02 + 1e-6  # measured on the windows it scanned (float32 sums: 1e-6)
    shares = {k: 1 - m.mean() for k, m in pruned.masks.items()}
    assert max(shares.values()) > 0 and len(set(np.round(list(shares.values()), 3))) > 1  # not uniform


@pytest.mark.parametrize("args,message", [
    (["--method", "magnitude", "--sparsity", "1.0"], "--sparsity must be in [0, 1)"),
    (["--method", "magnitude", "--sparsity", "-0.1"], "--sparsity must be in [0, 1)"),
    (["--method", "magnitude"], "needs --sparsity"),
    (["--method", "2:4", "--sparsity", "0.3"], "fixes the sparsity at 0.5"),
    (["--method", "5:4"], "1 <= N <= M"),
    (["--method", "pythagoras", "--sparsity", "0.5"], "unknown --method"),
    (["--method", "gradual", "--sparsity", "0.5"], "--finetune-steps"),
    (["--method", "heads", "--sparsity", "0.9"], "all 2 heads of layer"),
    (["--method", "wanda", "--sparsity", "0.5", "--embeddings"], "--embeddings works with"),
    (["--method", "neurons", "--sparsity", "0.5", "--sparse-storage"], "leaves none"),
    (["--method", "sensitivity"], "needs --max-loss-increase"),
    (["--method", "sensitivity", "--max-loss-increase", "-1"], "needs --max-loss-increase D > 0"),
    (["--method", "sensitivity", "--sparsity", "0.5", "--max-loss-increase", "0.1"], "chooses each matrix's"),
    (["--method", "magnitude", "--sparsity", "0.5", "--max-loss-increase", "0.1"], "is for --method sensitivity"),
    (["--method", "magnitude", "--sparsity", "0.5", "--finetune-steps", "-1"], "--finetune-steps must be"),
])
def test_bad_requests_get_one_line_and_exit_2(setup, capsys, tmp_path, args, message):
    assert prune(setup, *args, "--out", str(tmp_path / "x.npz")) == 2
    err = capsys.readouterr().err
    assert err.startswith("minigpt: error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x.npz").exists()


def test_nm_on_a_width_not_divisible_by_4(tmp_path, capsys):
    (tmp_path / "text.txt").write_text(TEXT)
    ckpt = make_checkpoint(tmp_path / "odd.npz", n_embd=18, n_head=3)  # c_attn and c_fc have 18 inputs
    assert main(["prune", str(ckpt), "--text", str(tmp_path / "text.txt"), *FAST, "--method", "2:4",
                 "--out", str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err
    assert "18 inputs, not a multiple of 4" in err and err.count("\n") == 1
