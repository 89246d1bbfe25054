"""`python -m server` is the `cinfer` command."""

from .cli import main

main(prog_name="cinfer")
