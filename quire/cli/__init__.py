"""The command line: typer app (`app.py`) and terminal rendering (`console.py`)."""
