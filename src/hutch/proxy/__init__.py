"""The preview data plane: preview hosts routed to sandbox ports."""
