"""minigpt bench --train-to LOSS: the same recipe in minigpt and PyTorch eager (timings are not asserted)."""
import numpy as np
import pytest

from minigpt import bench
from minigpt.cli import main
from minigpt.bench import bench_train_to
from minigpt.train_to import copy_into_torch

TEXT = "the quick brown fox jumps over the lazy dog; " * 40


def test_torch_copy_computes_the_same_loss():
    torch = pytest.importorskip("torch")
    from minigpt.config import preset
    from minigpt.model import GPT

    cfg, _ = preset("tiny", 30, block_size=16, dropout=0.0)
    model = GPT(cfg, seed=3, backend="numpy")
    tm = bench._torch_gpt(torch, cfg)
    copy_into_torch(tm, model.params, torch)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 30, (3, 16)), rng.integers(0, 30, (3, 16))
    ours = model.loss(x, y)
    with torch.no_grad():
        theirs = float(tm(torch.from_numpy(x), torch.from_numpy(y)))
    # same function and weights, float32 sums in different orders: a few ulps of a loss ~3.4
    assert theirs == pytest.approx(ours, rel=1e-5)


@pytest.mark.parametrize("with_torch", [False, True])
def test_rows_say_where_each_run_got(tmp_path, with_torch):
    torch = pytest.importorskip("torch") if with_torch else None
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    rows = bench_train_to(100.0, torch, preset_name="tiny", text=str(text), block_size=16, batch_size=4,
                          max_steps=20, eval_every=10, eval_batches=2)
    assert [r["impl"].split(":")[0] for r in rows] == ["minigpt numba"] + (["torch eager"] if torch else [])
    assert all("reached at step 10" in r["impl"] for r in rows)  # any loss is below 100: the first validation
    assert all(r["ms"] > 0 and r["rate"] > 0 for r in rows) and rows[0]["speedup"] == 1.0
    missed = bench_train_to(0.01, None, preset_name="tiny", text=str(text), block_size=16, batch_size=4,
                            max_steps=5, eval_every=10, eval_batches=1)
    assert "NOT reached at step 5" in missed[0]["impl"]


def test_cli_train_to_prints_the_table_and_rejects_bad_values(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench, "_torch", lambda: None)
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    argv = ["bench", "--train-to", "100", "--text", str(text), "--block-size", "16", "--batch-size", "4",
            "--max-steps", "10", "--eval-every", "5"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("minigpt bench on ") and "train to loss: val loss <= 100.0" in out
    for bad in (["--train-to", "0"], ["--train-to", "2", "--max-steps", "-3"]):
        assert main(["bench", *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("minigpt: error: --")
