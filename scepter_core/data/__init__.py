"""Built-in data; importing this package registers them."""
