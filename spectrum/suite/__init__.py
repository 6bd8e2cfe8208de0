"""The built-in scaling suite: its configuration, training loop and the runs it trains."""
