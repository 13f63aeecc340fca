"""Ray actor shells: thin, they move envelopes, own lifecycle and call plain-Python logic."""
