"""Released PixMo subsets: their parquet rows, and importing them into a dataset directory."""
