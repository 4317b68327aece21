"""Model families, one per module: ``vae`` (variational autoencoder), ``gan``, ``classifier``."""
