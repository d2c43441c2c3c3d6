"""`python -m casnap` runs the command line."""

from casnap.cli import main

main()
