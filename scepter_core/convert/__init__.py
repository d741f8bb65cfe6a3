"""Built-in convert; importing this package registers them."""
