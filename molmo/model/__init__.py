"""The Molmo model: config, vision encoder, connector, decoder LLMs, weights on disk.

``config`` (dataclasses and presets), ``official`` (hub config.json), ``vision``, ``connector``,
``llm``, ``molmo`` (the whole model), ``weights`` (official and our weight files) and ``parts``
(a Molmo from a Hugging Face LLM and a CLIP vision tower).
"""
