"""chatbaker_megatron: 3D-parallel training of the ChatBaker LLaMA models on megatron-core."""

__version__ = "0.1.0"
