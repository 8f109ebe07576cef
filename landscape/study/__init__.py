"""Layer 4, study: statistics (``correlate``), the manifest and its batch runner, the HTML report, and
the demo study. May import every layer below."""
