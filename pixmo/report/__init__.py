"""Looking at a dataset: points on images (``pixmo show``), the ``pixmo report`` page and charts."""
