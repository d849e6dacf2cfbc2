"""Motion quality metrics of the paper (FD_g, FD_k, Div_g, Div_k)."""
