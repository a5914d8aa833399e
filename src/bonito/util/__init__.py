"""Small helpers every stage uses: writing outputs whole and saying why a write failed."""
