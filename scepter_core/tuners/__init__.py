"""Built-in tuners; importing this package registers them."""
