"""The artifact: its config, the model (priors and decoders), the decoder family, the storage ledger and load-time checks."""
