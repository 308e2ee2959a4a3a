"""Model surgery: students cut from a teacher (layers, widths), structured pruning, ALBERT conversion."""
