"""The README's claims that code can check: the set-up commands and the preset table."""
import re
from pathlib import Path

from minigpt import GPT, preset

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_readme_opens_with_the_run_and_test_commands():
    block = README.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert commands[0].endswith("pip install -e . && minigpt tour")
    assert commands[1].endswith("pip install -e '.[test]' && pytest")


def test_preset_table_matches_the_code():
    rows = re.findall(r"^\| (tiny|small|base) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \| ([\d,]+) \|$", README, re.M)
    assert {r[0] for r in rows} == {"tiny", "small", "base"}
    for name, layers, heads, width, block, n_params in rows:
        cfg, _ = preset(name, vocab_size=96)
        assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size) == tuple(map(int, (layers, heads, width, block)))
        assert GPT(cfg).num_params() == int(n_params.replace(",", ""))
