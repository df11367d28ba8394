"""The routes, by concern; each reaches the server's state through serve/server.py's dependency.

openai.py   /v1/models, /v1/models/{id}, /v1/chat/completions, /v1/completions
site.py     the web chat page, its icon, /health
"""
