"""Hugging Face interop: training checkpoints <-> `LlamaForCausalLM` folders.

Checkpoints are read and written through chatbaker_megatron.checkpoint.

layout.py           megatron <-> HF tensor names and layouts (QKV, SwiGLU, vocab padding)
export_hf.py        `chatbaker export-hf`
import_hf.py        `chatbaker import-hf`
verify.py           `export-hf --verify`: our logits vs transformers' on the export
hf_config.py, safetensors_io.py, tokenizer_files.py, model_card.py: the HF folder's files
"""
