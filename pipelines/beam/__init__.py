"""The build as an Apache Beam graph, with the local process pool, disk groupings and progress."""
