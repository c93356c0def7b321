"""medidd.degrade."""
