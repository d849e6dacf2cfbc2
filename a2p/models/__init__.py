"""a2p.models."""
