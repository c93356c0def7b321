"""medidd.distill."""
