"""`twinformer serve`: an OpenAI-compatible server over either stack (book chapter 6).

protocol.py   the contract between the HTTP layer and the engines (what a request is, how tokens come back)
"""
