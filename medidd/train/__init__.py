"""medidd.train."""
