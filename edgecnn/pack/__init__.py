"""edgecnn.pack."""
