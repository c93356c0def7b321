"""medidd.report."""
