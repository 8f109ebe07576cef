"""The `landscape` command line: thin click commands over the library (installed as landscape.cli)."""
