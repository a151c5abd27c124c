"""The checkpoint formats: each module owns one format's config.json keys and weight names, both ways.

- :mod:`.state_spaces`: the official ``mamba_ssm`` layout (mambakit's own);
- :mod:`.hf`: transformers' ``MambaForCausalLM`` / ``Mamba2ForCausalLM``.
"""
