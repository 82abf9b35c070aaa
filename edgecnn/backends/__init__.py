"""edgecnn.backends."""
