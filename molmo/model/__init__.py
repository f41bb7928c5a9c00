"""The Molmo model: config, vision encoder, connector, decoder LLMs, weights on disk.

``config`` (dataclasses and presets), ``official`` (hub config.json), ``vision``, ``connector``,
``llm``, ``molmo`` (the whole model) and ``weights`` (official and our weight files).
"""
