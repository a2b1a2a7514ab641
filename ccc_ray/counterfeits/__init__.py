"""Counterfeits once made: the keep rule, quality figures, generation from trained methods, search runs."""
