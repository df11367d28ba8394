"""Hugging Face interop: training checkpoints <-> `LlamaForCausalLM` folders.

Checkpoints are read and written through chatbaker_megatron.checkpoint.

layout.py           megatron <-> HF tensor names and layouts (QKV, SwiGLU, vocab padding)
export_hf.py        `chatbaker export-hf`
import_hf.py        `chatbaker import-hf`
verify.py           `export-hf --verify`: our logits vs transformers' on the export
hf_config.py        config.json and generation_config.json <-> ModelConfig
safetensors_io.py   bounded-size safetensors shards written, tensors read lazily
tokenizer_files.py  the tokenizer files and chat template of the folder
model_card.py       the weights' provenance and the model card (README.md)
"""
