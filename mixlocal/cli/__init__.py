"""The `mixlocal` command line: Typer commands and their rich rendering."""
