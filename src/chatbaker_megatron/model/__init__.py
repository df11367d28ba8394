"""The ChatBaker LLaMA model on megatron-core.

spec.py      the LLaMA decoder layer as a megatron-core ModuleSpec
layers.py    our spec entries: RMSNorm and core attention on a chosen kernel backend
dispatch.py  the kernel backend registry: which implementation runs each fused op
llama.py     the TransformerConfig and one GPTModel per virtual pipeline stage
sharding.py  how the weights split over tensor and pipeline ranks
sizes.py     parameter counts and FLOPs per token
"""
