"""TEMP (replaced by the weights branch)."""
