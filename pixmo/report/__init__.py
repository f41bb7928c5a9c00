"""Looking at a dataset: points drawn on images (``pixmo show``), the page of ``pixmo report``."""
