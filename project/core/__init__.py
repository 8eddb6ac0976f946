"""Core: models, settings, A2A envelopes, Redis state, registry, errors. Imports no tier."""
