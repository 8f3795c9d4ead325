"""`python -m edgepart ...` is the `edgepart` command."""

from .cli import main

main()
