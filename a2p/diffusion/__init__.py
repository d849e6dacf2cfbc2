"""a2p.diffusion."""
