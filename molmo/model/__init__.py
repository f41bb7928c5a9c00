"""The Molmo model: config, vision encoder, connector, decoder LLMs and checkpoint weights."""
