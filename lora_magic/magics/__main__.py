"""`python -m lora_magic.magics --markdown` prints the magic reference (docs/magics.md)."""

import sys

from .reference import markdown

if sys.argv[1:] != ["--markdown"]:
    sys.exit("usage: python -m lora_magic.magics --markdown > docs/magics.md")
print(markdown(), end="")
