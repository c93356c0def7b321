"""medidd.package."""
