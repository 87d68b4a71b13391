"""`llmasr demo`: the embedded default, a speech LLM trained end to end on this machine from synthesized speech."""
