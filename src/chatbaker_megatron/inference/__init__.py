"""Generation and chat: KV-cached decoding from a training checkpoint or an HF folder.

backends.py   the model behind a generation (megatron GPTModel or transformers)
sampling.py   greedy / temperature / top-k / top-p / repetition penalty, shared
generator.py  the decoding loop, stop conditions and streamed text
filters.py    the optional input filter hook (blocklist or a plug-in)
generate_cli.py, chat_cli.py   the `chatbaker generate` and `chatbaker chat` verbs
"""
