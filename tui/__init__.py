"""graft's front ends: the `graft` command line (and, later, the Textual app)."""
