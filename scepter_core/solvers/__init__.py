"""Built-in solvers; importing this package registers them."""
