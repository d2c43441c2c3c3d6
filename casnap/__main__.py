"""`python -m casnap` runs the command line."""

import casnap

casnap._quiet_interrupts_while_loading()  # as the console script's: before the CLI's modules

from casnap.cli import main  # noqa: E402 - after the handler: importing is what it covers

main()
