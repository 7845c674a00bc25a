"""`python -m dynctl` runs the same app as the `dynctl` command."""

from dynctl.app import main

main()
