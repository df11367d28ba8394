"""Generation and chat: KV-cached decoding from a training checkpoint or an HF folder.

backends.py      the model behind a generation (megatron GPTModel or transformers)
sampling.py      greedy / temperature / top-k / top-p / repetition penalty, shared
generator.py     the decoding loop, stop conditions and streamed text
filters.py       the optional input filter hook (blocklist or a plug-in)
options.py       the command-line options generate, chat and serve share
generate_cli.py  `chatbaker generate`
chat_cli.py      `chatbaker chat`
"""
