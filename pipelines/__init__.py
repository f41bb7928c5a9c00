"""pipelines: the engines (Beam, Ray) running pixmo's stages, the command line, the demo."""
