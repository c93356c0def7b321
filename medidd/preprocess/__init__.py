"""medidd.preprocess."""
