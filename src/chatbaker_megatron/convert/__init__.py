"""Hugging Face interop: training checkpoints <-> `LlamaForCausalLM` folders.

layout.py           megatron <-> HF tensor names and layouts (QKV, SwiGLU, vocab padding)
reader.py           a training checkpoint's tensors, one layer at a time, at any TP/PP/VPP
export_hf.py        `chatbaker export-hf`
import_hf.py        `chatbaker import-hf`
hf_config.py, safetensors_io.py, tokenizer_files.py, model_card.py: the HF folder's files
world.py            a one-process torch.distributed world for single-process tools
"""
