"""Screens pushed over the main one: the merge builder, the add dialog and the help."""
