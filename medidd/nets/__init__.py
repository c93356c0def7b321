"""medidd.nets."""
