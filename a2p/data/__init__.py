"""a2p.data."""
