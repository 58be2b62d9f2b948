"""Neural networks: shared conv trunks, the VAE, the VQ-VAE and the PixelCNN prior."""
