"""Built-in optim; importing this package registers them."""
