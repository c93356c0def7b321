"""medidd.prior."""
