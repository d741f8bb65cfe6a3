"""One module per tab; each `build` lays out its components inside the current gr.Tab."""
