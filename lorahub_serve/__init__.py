"""lorahub-serve."""
