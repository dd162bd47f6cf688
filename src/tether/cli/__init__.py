"""The command line: the only layer that prints, prompts, and maps errors to exit codes."""
