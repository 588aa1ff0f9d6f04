"""`python -m quire`: the same as the `quire` command."""

from quire.cli.launch import main

main()
