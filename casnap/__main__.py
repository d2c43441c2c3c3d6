"""`python -m casnap` runs the command line."""

from casnap.start import main

main()
