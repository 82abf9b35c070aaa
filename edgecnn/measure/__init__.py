"""edgecnn.measure."""
