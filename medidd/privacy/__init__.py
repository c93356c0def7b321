"""medidd.privacy."""
