"""``python -m prefork_tcp`` is the ``prefork-tcp`` command."""

from .cli import main

main(prog_name="prefork-tcp")
