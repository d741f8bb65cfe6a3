"""Built-in diffusion; importing this package registers them."""
