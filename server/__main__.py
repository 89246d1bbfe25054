"""`python -m server` is the `cinfer` command."""

from .cli import main

if __name__ == "__main__":  # not when a decoding process (decoding.py) imports it
    main(prog_name="cinfer")
