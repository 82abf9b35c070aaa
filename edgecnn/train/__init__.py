"""edgecnn.train."""
