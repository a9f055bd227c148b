"""The network, tokenizer, checkpoints, corpus, training and evaluation. Imports nothing of ours."""
