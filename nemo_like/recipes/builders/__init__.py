"""Builders: the only code that reads recipe sections and turns them into parts (components take plain arguments)."""
