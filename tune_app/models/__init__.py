"""Models: encoders (catalog + tiny offline encoder), heads, the dual-head model, losses."""
