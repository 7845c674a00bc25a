"""dynctl: the command-line client of dynd, for operators and scripts."""
