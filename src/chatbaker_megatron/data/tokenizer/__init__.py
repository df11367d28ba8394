"""The tokenizer.

load.py       the run-time `ChatBakerTokenizer`: load a directory, encode, decode
train.py      training the byte-level BPE, writing an HF-loadable directory
fast.py       tiktoken with the tokenizer's own ids, used where exact
fertility.py  tokens per character and per word, Korean and English
cli.py        `chatbaker tokenizer train`
"""
