"""The engine: envelopes and codec, mailbox, event bus and log, state, hooks, the Runtime facade."""
