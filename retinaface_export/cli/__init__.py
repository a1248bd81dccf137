"""Command-line entry points. Only this package prints, and only it turns errors into exit codes."""
