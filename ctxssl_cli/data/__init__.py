"""Data: the synthetic renderer, 3DIEBench packing, the prepared format and pair sampling."""
