"""edgecnn.export."""
