"""The wire formats the server speaks: Gemini's REST API (the engines' own shapes),
OpenAI's Chat Completions and Anthropic's Messages.

The OpenAI and Anthropic modules turn their provider's request body into a
`GenerateRequest`, the engine's chunks into their provider's replies (SSE events or a
whole JSON body), and errors and faults into their provider's error bodies and headers
(`base.Wire`). `app.py` serves all three through the same fault plan, request log and token.
"""
