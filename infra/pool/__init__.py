"""The local instance pool: real backend processes per service, scaled by `foresight pool`."""
