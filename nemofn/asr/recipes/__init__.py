"""Ready-made training recipes over the functional core (config in, trained state out)."""
