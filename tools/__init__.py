"""Build and test helpers for the book (not part of the minigpt package)."""
