"""The build as an Apache Beam graph, and the local process pool, disk groupings and progress it uses."""
