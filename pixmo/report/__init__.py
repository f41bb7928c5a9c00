"""Looking at a dataset: points drawn on images (``pixmo show``) and the HTML report (``pixmo report``)."""
