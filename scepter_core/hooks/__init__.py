"""Built-in hooks; importing this package registers them."""
