"""The `scepter` command line (Typer + Rich). No ML logic lives here."""
