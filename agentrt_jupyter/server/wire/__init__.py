"""The OpenAI and Anthropic wire formats, mapped to and from the engines' Gemini shapes.

Each module turns its provider's request body into a `GenerateRequest`, the engine's
chunks into its provider's replies (SSE events or a whole JSON body), and errors and
faults into its provider's error bodies and headers. `app.py` serves them through the
same fault plan, request log and token as the Gemini routes.
"""
