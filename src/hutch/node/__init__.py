"""What runs on one host: agent connections, warm pools, egress."""
