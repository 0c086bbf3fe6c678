"""`python -m chapters [names...]`: the chapter tour, same as `minigpt tour`."""
import sys

from minigpt.cli import main

sys.exit(main(["tour", *sys.argv[1:]]))
