"""One module per CLI command: build from the config, run, write the artifact, return an exit code."""
