"""edgecnn.data."""
